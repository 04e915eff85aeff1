// Live view: server-sent events into the table; Pause holds new rows;
// state events show this replica's readiness, NATS and spool.
(function () {
  var body = document.querySelector('#live tbody'), state = document.getElementById('state');
  var edge = document.getElementById('edge-state');
  var pause = document.getElementById('pause'), paused = false, held = [];
  var labels = Array.prototype.map.call(document.querySelectorAll('#live thead th'), function (th) { return th.textContent; });
  var cols = ['at', 'type', 'kind', 'shortcode', 'transaction_id', 'result_code', 'amount', 'msisdn', 'reference', 'token_id', 'source'];
  function row(e) {
    var tr = document.createElement('tr'); tr.className = e.type;
    if (e.seq) tr.setAttribute('data-seq', e.seq);
    cols.forEach(function (c, i) {
      var td = document.createElement('td'), v = e[c] || '';
      if (c === 'result_code' && e.type === 'rejected') v = e.reason || '';
      if (c === 'at' && v) { td.title = v; v = v.replace(/^.*T/, '').replace(/(\.\d+)?Z$/, ''); }
      if (c === 'transaction_id' && e.type === 'callback' && e.seq) {
        var a = document.createElement('a'); a.href = '/console/callbacks/' + e.seq; a.textContent = v || ('#' + e.seq); td.appendChild(a);
      } else if (c === 'token_id' && v) {
        var t = document.createElement('a'); t.href = '/console/tokens/' + v; t.textContent = v; td.appendChild(t);
      } else td.textContent = v;
      td.className = 'c-' + c; td.setAttribute('data-label', labels[i]);
      tr.appendChild(td);
    });
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
  }
  function showState(s) {
    var parts = [];
    parts.push((s.edge ? s.edge + ': ' : '') + (s.ready ? 'ready' : 'not ready (' + s.not_ready + ')'));
    parts.push('NATS ' + s.nats.toLowerCase());
    if (s.spool_known) parts.push(s.spool_records ? 'spool ' + s.spool_records + ' waiting (' + s.spool_bytes + ' bytes)' : 'spool empty');
    edge.textContent = parts.join(' · ');
    edge.className = 'edge-state ' + (s.ready && s.nats === 'CONNECTED' && !s.spool_records ? 'ok' : 'bad');
    edge.setAttribute('data-ready', String(s.ready));
  }
  pause.addEventListener('click', function () {
    paused = !paused; pause.setAttribute('aria-pressed', String(paused)); pause.textContent = paused ? 'Resume' : 'Pause';
    if (!paused) { held.forEach(row); held = []; }
    state.textContent = paused ? 'paused' : 'live';
  });
  var es = new EventSource('/console/events' + location.search);
  es.onopen = function () { state.textContent = paused ? 'paused' : 'live'; };
  es.onerror = function () { if (es.readyState !== 2) state.textContent = 'reconnecting…'; };
  es.addEventListener('state', function (m) {
    var s = JSON.parse(m.data);
    if (s.signed_out) { es.close(); state.textContent = 'signed out'; location.assign('/console/login'); return; }
    showState(s);
  });
  ['callback', 'missing', 'rejected'].forEach(function (t) {
    es.addEventListener(t, function (m) { var e = JSON.parse(m.data); if (paused) held.push(e); else row(e); });
  });
})();
