// The TypeScript Agents SDK's Twilio transport as a bridge server, for the side-by-side load run
// (examples/loadgen.rs). Written here for the comparison; it follows the SDK's documented usage:
// one TwilioRealtimeTransportLayer under one RealtimeSession per Media Streams connection.
//
// Environment: PORT (5050), OPENAI_API_KEY, OPENAI_REALTIME_URL.
import http from 'node:http';
import { WebSocketServer } from 'ws';
import { RealtimeAgent, RealtimeSession } from '@openai/agents/realtime';
import { TwilioRealtimeTransportLayer } from '@openai/agents-extensions';

const port = Number(process.env.PORT || 5050);
const apiKey = process.env.OPENAI_API_KEY || 'sk-missing';
const url = process.env.OPENAI_REALTIME_URL || 'wss://api.openai.com/v1/realtime?model=gpt-realtime';

const server = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.end('ok\n');
  } else {
    res.statusCode = 404;
    res.end('not found\n');
  }
});
const wss = new WebSocketServer({ noServer: true });
server.on('upgrade', (req, socket, head) => {
  if (!req.url.startsWith('/media-stream')) {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => startCall(ws));
});

async function startCall(twilioWebSocket) {
  const transport = new TwilioRealtimeTransportLayer({ twilioWebSocket, url });
  const agent = new RealtimeAgent({
    name: 'Assistant',
    instructions: 'You answer phone calls briefly.',
  });
  const session = new RealtimeSession(agent, { transport, model: 'gpt-realtime' });
  session.on('error', (e) => console.error('session error', e?.error?.message ?? e));
  try {
    await session.connect({ apiKey, url });
  } catch (e) {
    console.error('connect failed', e?.message ?? e);
    twilioWebSocket.close();
  }
}

server.listen(port, '127.0.0.1', () => console.log(`ts bridge listening on http://127.0.0.1:${port}`));
process.on('SIGTERM', () => process.exit(0));
