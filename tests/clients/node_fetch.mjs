// Node's built-in fetch with no proxy settings (Node ignores HTTPS_PROXY anyway): in a bottle its
// connections reach cork only through the eBPF steering. Trusts the bottle's CA through
// NODE_EXTRA_CA_CERTS. Prints a JSON report.
//
//   node node_fetch.mjs BASE_URL CANARY
const [base, canary] = process.argv.slice(2);
const report = {};
try {
  const r = await fetch(`${base}/bytes/1024`);
  report.get_status = r.status;
  report.get_length = (await r.arrayBuffer()).byteLength;
  const c = await fetch(`${base}/echo`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token: canary }),
  });
  report.canary_status = c.status;
  report.canary_rule = (await c.json()).rule ?? null;
} catch (e) {
  report.error = `${e}: ${e.cause ?? ""}`;
}
try {
  await fetch("https://evil.test/");
  report.evil = "reached";
} catch (e) {
  report.evil = String(e.cause?.code ?? e.cause ?? e);
}
console.log(JSON.stringify(report));
