// Sends spans with the OpenTelemetry JS SDK's own OTLP exporters, for tests/interop.
// usage: node send_spans.cjs <grpc|http/protobuf|http/json> <port> <none|gzip> <count> <attributes JSON>
// prints {"acknowledged": [span ids]} for the batches the exporter reported as exported.
'use strict';
const { TracerProvider, SimpleSpanProcessor, InMemorySpanExporter } = require('@opentelemetry/sdk-trace');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const grpc = require('@opentelemetry/exporter-trace-otlp-grpc');
const proto = require('@opentelemetry/exporter-trace-otlp-proto');
const json = require('@opentelemetry/exporter-trace-otlp-http');

const [protocol, port, compression, count, attributes] = process.argv.slice(2);

function exporter() {
  const base = `http://127.0.0.1:${port}`;
  if (protocol === 'grpc') return new grpc.OTLPTraceExporter({ url: base, compression });
  if (protocol === 'http/protobuf') return new proto.OTLPTraceExporter({ url: `${base}/v1/traces`, compression });
  if (protocol === 'http/json') return new json.OTLPTraceExporter({ url: `${base}/v1/traces`, compression });
  throw new Error(`unknown protocol ${protocol}`);
}

async function main() {
  const memory = new InMemorySpanExporter();
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'checkout' }),
    spanProcessors: [new SimpleSpanProcessor({ exporter: memory })],
  });
  const tracer = provider.getTracer('tests.js', '1.0');
  const attrs = JSON.parse(attributes);
  for (let i = 0; i < Number(count); i++) {
    const span = tracer.startSpan(`op-${i}`);
    span.setAttribute('index', i);
    for (const [key, value] of Object.entries(attrs)) span.setAttribute(key, value);
    span.end();
  }
  const spans = memory.getFinishedSpans();
  const out = exporter();
  const result = await new Promise((resolve) => out.export(spans, resolve));
  await out.shutdown();
  await provider.shutdown();
  const acknowledged = result.code === 0 ? spans.map((s) => s.spanContext().spanId) : [];
  process.stdout.write(JSON.stringify({ acknowledged, error: result.error ? String(result.error) : null }) + '\n');
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
