// Sends N track events with @segment/analytics-node to a tally host and prints, as the last
// line, {"sent": [messageIds the SDK confirmed], "failed": count}.
// Usage: node send.js <host> <writeKey> <n>
const { Analytics } = require('@segment/analytics-node');

const [host, writeKey, n] = process.argv.slice(2);
const analytics = new Analytics({ writeKey, host, maxEventsInBatch: 50, flushInterval: 200, maxRetries: 3 });
const sent = [];
let failed = 0;
analytics.on('error', (err) => { console.error('error', err && err.message); });

async function main() {
  const pending = [];
  for (let i = 0; i < Number(n); i++) {
    pending.push(new Promise((resolve) => {
      analytics.track(
        { userId: `node-${i % 5}`, event: 'Order Completed', properties: { revenue: i, currency: 'USD' } },
        (err, ctx) => {
          if (err) failed += 1; else sent.push(ctx.event.messageId);
          resolve();
        },
      );
    }));
  }
  await Promise.all(pending);
  await analytics.closeAndFlush({ timeout: 30000 });
  console.log(JSON.stringify({ sent, failed }));
}

main().catch((e) => { console.error(e); process.exit(1); });
