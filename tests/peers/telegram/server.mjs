// The Telegram Bot API emulator (npm `telegram-test-api`) as a loopback
// peer for mHero's integration tests: bots call /bot<token>/<method> as on
// api.telegram.org; the emulator's client routes (/sendMessage,
// /getUpdates) play the health worker's phone, and a user's message goes
// to the bot's webhook once one is set with /bot<token>/setWebhook.
//
// Usage: node server.mjs [port]   (0, the default, picks a free port)
//   Prints exactly one line "listening <port>" on stdout once ready.

import net from 'node:net';
import TelegramServer from 'telegram-test-api';

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const wanted = Number(process.argv[2] ?? 0);
const port = wanted || (await freePort());
const server = new TelegramServer({ port, host: '127.0.0.1', storage: 'RAM', storeTimeout: 600 });
await server.start();
process.stdout.write(`listening ${port}\n`);
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, async () => {
    await server.stop();
    process.exit(0);
  });
}
