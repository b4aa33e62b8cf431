// Operator panel: polls GET /api/nodes (this node, and every node of a
// cluster that wrote its snapshot in the last 10 s) and shows each node's
// connections, subscriptions, rates and poller health. A server without the
// endpoint (404) hides the panel and is not asked again.

const POLL_MS = 2000;
const STALE_MS = 6000; // a snapshot older than this is shown as stale (nodes write every 2 s)

const fmtRate = (v) => (typeof v !== 'number' ? '–' : v >= 100 ? Math.round(v).toLocaleString('en') : v.toFixed(1));
const pad2 = (n) => String(n).padStart(2, '0');
const clock = (d) => `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
const fmtInt = (v) => (typeof v === 'number' ? v.toLocaleString('en') : '–');

function ago(iso, now) {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return { text: '–', ms: NaN };
  const s = Math.max(0, (now - t) / 1000);
  const text = s < 60 ? `${s.toFixed(0)} s ago` : s < 3600 ? `${(s / 60).toFixed(0)} min ago` : s < 172800 ? `${(s / 3600).toFixed(1)} h ago` : `${(s / 86400).toFixed(0)} d ago`;
  return { text, ms: now - t };
}

function cell(text, cls = '', title = '') {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  if (title) td.title = title;
  return td;
}

function pollerCell(p, now) {
  if (!p || !p.enabled) return cell('off', 'muted', 'this node does not poll the data center');
  const last = p.last_success ? ago(p.last_success, now).text : 'never';
  const td = cell('', p.healthy ? 'ok' : 'bad');
  td.append(p.healthy ? '● healthy' : '● failing');
  const small = document.createElement('small');
  small.className = 'muted';
  small.textContent = ` ${fmtInt(p.ids)} ids · ${fmtRate(p.errors_per_s)} err/s · ok ${last}`;
  td.append(small);
  return td;
}

// startOps runs the panel; canPoll() says whether to ask now (the page asks
// only while its WebSocket is open, so that a server restart does not fill
// the browser's console with refused requests). Returns a stop function.
export function startOps({ section, body, note, canPoll }) {
  let timer = 0, stopped = false, busy = false;
  async function poll() {
    if (stopped || busy) return;
    if (!canPoll()) { note.textContent = 'paused while disconnected'; section.classList.add('paused'); return; }
    busy = true;
    try {
      const res = await fetch('/api/nodes', { cache: 'no-store', headers: { Accept: 'application/json' } });
      if (res.status === 404) { // an older server: no operator endpoint
        section.hidden = true;
        stop();
        return;
      }
      if (!res.ok) { note.textContent = `GET /api/nodes: HTTP ${res.status}`; return; }
      render(await res.json());
    } catch (err) {
      note.textContent = `GET /api/nodes failed: ${err.message}`;
    } finally {
      busy = false;
    }
  }
  function render(doc) {
    const now = Date.now(), nodes = Array.isArray(doc?.nodes) ? doc.nodes : [];
    section.hidden = false;
    section.classList.remove('paused');
    const rows = nodes.map((n) => {
      const tr = document.createElement('tr');
      const up = ago(n.updated, now);
      const name = cell(n.id ?? '?', 'node');
      if (n.id === doc.self) {
        const tag = document.createElement('small');
        tag.className = 'tag';
        tag.textContent = 'this node';
        name.append(' ', tag);
      }
      if (n.started) name.title = `started ${n.started}`;
      tr.append(name,
        cell(fmtInt(n.connections), 'num'),
        cell(fmtInt(n.subscriptions), 'num'),
        cell(fmtInt(n.keys), 'num'),
        cell(fmtRate(n.publications_per_s), 'num'),
        cell(fmtRate(n.deliveries_per_s), 'num'),
        cell(fmtRate(n.dropped_connections_per_s), n.dropped_connections_per_s > 0 ? 'num bad' : 'num'),
        pollerCell(n.poller, now),
        cell(up.text, up.ms > STALE_MS ? 'bad' : 'muted', up.ms > STALE_MS ? 'no snapshot from this node for a while' : ''));
      return tr;
    });
    body.replaceChildren(...rows);
    note.textContent = `${nodes.length} node${nodes.length === 1 ? '' : 's'} · rates over the last ~10 s · updated ${clock(new Date(now))}`;
  }
  function stop() { stopped = true; clearInterval(timer); }
  timer = setInterval(poll, POLL_MS);
  poll();
  return { stop, poll };
}
