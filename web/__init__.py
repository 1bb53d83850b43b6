"""The web app (aiohttp): sign-in, account, credits, admin, JSON API, health and metrics."""
