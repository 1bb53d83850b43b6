// Live credits: the balance and the newest ledger rows update from /credits/live (SSE).
(function () {
  "use strict";

  var balance = document.getElementById("balance");
  var rows = document.getElementById("ledger-rows");
  var status = document.getElementById("live-status");
  if (!balance || !rows || !window.EventSource) {
    return;
  }
  var lastId = parseInt(rows.getAttribute("data-last-id") || "0", 10) || 0;
  var showRows = rows.getAttribute("data-live") === "true";
  var action = rows.getAttribute("data-action") || "";
  var limit = parseInt(rows.getAttribute("data-limit") || "50", 10) || 50;

  function setStatus(state, text) {
    if (status) {
      status.setAttribute("data-state", state);
      status.textContent = text;
    }
  }

  function cell(text, className) {
    var td = document.createElement("td");
    if (className) {
      td.className = className;
    }
    td.textContent = text;
    return td;
  }

  function addRow(row) {
    var tr = document.createElement("tr");
    var timeCell = document.createElement("td");
    var time = document.createElement("time");
    time.setAttribute("datetime", row.iso);
    var date = document.createElement("span");
    date.className = "nowrap";
    date.textContent = row.date;
    var clock = document.createElement("span");
    clock.className = "nowrap";
    clock.textContent = row.clock;
    time.appendChild(date);
    time.appendChild(document.createTextNode(" "));
    time.appendChild(clock);
    timeCell.appendChild(time);
    tr.appendChild(timeCell);
    tr.appendChild(cell(row.action_label));
    var sign = row.amount > 0 ? "positive" : row.amount < 0 ? "negative" : "";
    tr.appendChild(cell(row.amount_text, "num " + sign));
    tr.appendChild(cell(String(row.balance_after), "num"));
    tr.appendChild(cell(row.details, "details"));
    tr.className = "row-new";
    rows.insertBefore(tr, rows.firstChild);
    while (rows.children.length > limit) {
      rows.removeChild(rows.lastChild);
    }
    var table = document.getElementById("ledger-table");
    var empty = document.getElementById("ledger-empty");
    if (table) {
      table.hidden = false;
    }
    if (empty) {
      empty.hidden = true;
    }
  }

  var source = new EventSource("/credits/live?after=" + lastId);
  source.addEventListener("open", function () {
    setStatus("live", "Live: changes appear here as they happen.");
  });
  source.addEventListener("error", function () {
    setStatus("paused", "Live updates paused; reconnecting…");
  });
  source.addEventListener("credits", function (event) {
    var data = JSON.parse(event.data);
    balance.textContent = String(data.balance);
    var row = data.row;
    if (row && row.id > lastId) {
      lastId = row.id;
      if (showRows && (!action || action === row.action)) {
        addRow(row);
      }
    }
  });
  window.addEventListener("pagehide", function () {
    source.close();
  });
})();
