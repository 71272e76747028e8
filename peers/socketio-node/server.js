// A peer of Roomkit's classroom server for the benchmark of issue 17: the
// same class on Socket.IO 4.8 (Node.js 20), written the way its
// documentation shows, with 100 ms chat batching.
//
// * A client connects to the default namespace with the auth
//   {uin, role: "teacher" | "student", subclass} and joins the rooms "all",
//   "staff" (teachers) or "sub-<subclass>" (students).
// * "say" from a teacher, {text}, is emitted to "all" as "say" {uin, text}.
// * "chat" from a student, {text}, is appended to its sub-class's buffer;
//   every 100 ms one "chat" batch {sub, lines: [{uin, text}, ...]} per
//   non-empty sub-class goes to "sub-<k>" and "staff".
//
// Run: node server.js --port 3002 (prints "listening on ...").
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

function portFromArgs(argv) {
  let port = 3002;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--port" && i + 1 < argv.length) {
      port = Number(argv[++i]);
    } else {
      throw new Error(`unknown option ${argv[i]} (use --port P)`);
    }
  }
  if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new Error("--port needs a port number");
  }
  return port;
}

const port = portFromArgs(process.argv.slice(2));
const httpServer = http.createServer();
const io = new Server(httpServer, { serveClient: false });

// Chat waiting for the next window, by sub-class.
let pending = new Map();

io.on("connection", (socket) => {
  const auth = socket.handshake.auth || {};
  const uin = Number(auth.uin);
  if (auth.role === "teacher") {
    socket.join(["all", "staff"]);
    socket.on("say", (msg) => {
      io.to("all").emit("say", { uin, text: msg && msg.text });
    });
  } else {
    const sub = Number(auth.subclass) || 0;
    socket.join(["all", `sub-${sub}`]);
    socket.on("chat", (msg) => {
      let lines = pending.get(sub);
      if (lines === undefined) {
        lines = [];
        pending.set(sub, lines);
      }
      lines.push({ uin, text: msg && msg.text });
    });
  }
});

// Every 100 ms, one batch per sub-class that chatted.
setInterval(() => {
  const window = pending;
  pending = new Map();
  for (const [sub, lines] of window) {
    if (lines.length > 0) {
      io.to([`sub-${sub}`, "staff"]).emit("chat", { sub, lines });
    }
  }
}, 100);

httpServer.listen(port, "127.0.0.1", () => {
  const a = httpServer.address();
  console.log(`listening on ${a.address}:${a.port}`);
});
