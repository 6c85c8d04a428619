// chat browser client: native ES modules, no framework, no build step. Loaded by index.html
// as <script type="module" src="/app.js">; the server serves every file under static/.
//
//   js/core/  DOM-free (runs under Node: tests/client-unit): the wire protocol, per-room
//             cursor, timeline (order and dedup), outbox, unread counts, the socket's life,
//             and sync.js, which ties them into the client half of the delivery guarantees.
//   js/view/  the DOM: helpers (user text only ever as text) and rendering.
//   js/main.js  the page: login, room list, history, composer, and the wiring.
import './js/main.js';
