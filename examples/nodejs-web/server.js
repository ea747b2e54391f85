// The Node.js example app: answers who served the request.
const http = require("http");

const env = process.env;
const port = Number(env.PORT || 5000);

const server = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/plain" });
  res.end(
    `Hello from example: dyno=${env.DYNO || "?"} job=${env.ENCOM_JOB_ID || "?"} ` +
      `port=${env.PORT || "?"} greeting=${env.GREETING || "none"}\n`
  );
});

server.listen(port, "0.0.0.0", () => console.log(`Listening on ${port}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
