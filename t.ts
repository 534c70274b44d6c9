import { sm2 } from 'sm-crypto-v2';
const priv = '3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8'.toLowerCase();
const pub = sm2.getPublicKeyFromPrivateKey(priv);
console.log(pub);
const ct = sm2.doEncrypt('encryption standard', pub, 1);
console.log('enc len', ct.length, ct.slice(0, 4));
console.log(sm2.doDecrypt(ct, priv, 1));
const official = '04EBFC718E8D1798620432268E77FEB6415E2EDE0E073C0F4F640ECD2E149A73E858F9D81E5430A57B36DAAB8F950A3C64E6EE6A63094D99283AFF767E124DF059983C18F809E262923C53AEC295D30383B54E39D609D160AFCB1908D0BD876621886CA989CA9C7D58087307CA93092D651EFA'.toLowerCase();
try { console.log('dec official no04', sm2.doDecrypt(official, priv, 1)); } catch (e) { console.log('err', e); }
try { console.log('dec official with04', sm2.doDecrypt('04' + official, priv, 1)); } catch (e) { console.log('err', e); }
const k = '59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21'.toLowerCase();
const kG = sm2.getPublicKeyFromPrivateKey(k);
const sig = sm2.doSignature('message digest', priv, { hash: true, userId: '1234567812345678', pointPool: [{ k: BigInt('0x' + k), x1: BigInt('0x' + kG.slice(2, 66)) }] });
console.log(sig);
console.log(sm2.doVerifySignature('message digest', sig, pub, { hash: true }));
try { console.log(sm2.doVerifySignature('message digest', 'zz', pub, { hash: true, der: true })); } catch (e) { console.log('verify throws', (e as Error).message); }
let t = performance.now(); for (let i = 0; i < 300; i++) sm2.doSignature('message digest', priv, { hash: true, der: true, publicKey: pub }); console.log('sign/s', 300 / ((performance.now() - t) / 1000));
const pre = sm2.precomputePublicKey(pub); const s2 = sm2.doSignature('message digest', priv, { hash: true, der: true, publicKey: pub });
t = performance.now(); for (let i = 0; i < 300; i++) sm2.doVerifySignature('message digest', s2, pre, { hash: true, der: true }); console.log('verify/s', 300 / ((performance.now() - t) / 1000));
const a1 = sm2.doEncrypt('x', pub, 1, { asn1: true }); console.log('asn1', a1.slice(0, 10));
