"""Repositories: the only code that builds SQL or touches sessions' queries.

Every function is keyword-only past the session and does not commit; services own transactions.
"""
