// Live view: server-sent events into the table; Pause holds new rows.
(function () {
  var body = document.querySelector('#live tbody'), state = document.getElementById('state');
  var pause = document.getElementById('pause'), paused = false, held = [];
  var cols = ['at', 'type', 'kind', 'shortcode', 'transaction_id', 'result_code', 'amount', 'msisdn', 'reference', 'token_id', 'source'];
  function row(e) {
    var tr = document.createElement('tr'); tr.className = e.type;
    cols.forEach(function (c) {
      var td = document.createElement('td'), v = e[c] || '';
      if (c === 'result_code' && e.type === 'rejected') v = e.reason || '';
      if (c === 'at') v = v.replace('T', ' ').replace(/\.\d+/, '');
      if (c === 'transaction_id' && e.type === 'callback' && e.seq) {
        var a = document.createElement('a'); a.href = '/console/callbacks/' + e.seq; a.textContent = v || ('#' + e.seq); td.appendChild(a);
      } else if (c === 'token_id' && v) {
        var t = document.createElement('a'); t.href = '/console/tokens/' + v; t.textContent = v; td.appendChild(t);
      } else td.textContent = v;
      tr.appendChild(td);
    });
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
  }
  pause.addEventListener('click', function () {
    paused = !paused; pause.setAttribute('aria-pressed', String(paused)); pause.textContent = paused ? 'Resume' : 'Pause';
    if (!paused) { held.forEach(row); held = []; }
    state.textContent = paused ? 'paused' : 'live';
  });
  var es = new EventSource('/console/events' + location.search);
  es.onopen = function () { state.textContent = paused ? 'paused' : 'live'; };
  es.onerror = function () { state.textContent = 'reconnecting…'; };
  ['callback', 'missing', 'rejected'].forEach(function (t) {
    es.addEventListener(t, function (m) { var e = JSON.parse(m.data); if (paused) held.push(e); else row(e); });
  });
})();
