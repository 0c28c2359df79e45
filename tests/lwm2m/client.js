// A real LwM2M client (coap-node, on smartobject) for the black-box tests. It registers with
// the server at 127.0.0.1:PORT as endpoint EP with LIFETIME seconds, holding
// 3303/0 (temperature), 3304/0 (humidity) and 3311/0 (light control), and prints one JSON
// line per event. Commands on stdin, one a line:
//   set OID IID RESOURCE VALUE   change a value (observers get a notification)
//   update LIFETIME              send an Update with a new lifetime
//   deregister                   send a De-register
//   exit
const CoapNode = require('coap-node');
const SmartObject = require('smartobject');
const readline = require('readline');

const [port, ep, lifetime] = [+process.argv[2], process.argv[3], +(process.argv[4] || 300)];
const out = (event, extra) => console.log(JSON.stringify(Object.assign({ event }, extra || {})));

const so = new SmartObject();
so.init(3303, 0, { sensorValue: 21.5, units: 'Cel' });
so.init(3304, 0, { sensorValue: 40 });
so.init(3311, 0, { onOff: false, dimmer: 50 });
const node = new CoapNode(ep, so, { lifetime });
node.on('error', e => out('error', { message: String(e) }));
node.register('127.0.0.1', port, (err, rsp) => out('registered', { err: err && String(err), status: rsp && rsp.status }));

readline.createInterface({ input: process.stdin }).on('line', line => {
  const [cmd, ...args] = line.trim().split(/\s+/);
  if (cmd === 'set') {
    const [oid, iid, rid, value] = args;
    const v = isNaN(+value) ? value : +value;
    so.write(+oid, +iid, isNaN(+rid) ? rid : +rid, v, err => out('set', { err: err && String(err) }));
  } else if (cmd === 'update') {
    node.update({ lifetime: +args[0] }, (err, rsp) => out('updated', { err: err && String(err), status: rsp && rsp.status }));
  } else if (cmd === 'deregister') {
    node.deregister((err, rsp) => out('deregistered', { err: err && String(err), status: rsp && rsp.status }));
  } else if (cmd === 'exit') {
    process.exit(0);
  }
});
