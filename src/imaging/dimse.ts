// dcmjs-dimse, loaded once: it logs every PDU (and every refused connection) to the console;
// medmesh reports and audits what matters itself.
import dimse from 'dcmjs-dimse';

dimse.log.setLevel('silent');

export default dimse;
