// xhr2 (an XMLHttpRequest for Node, which dicomweb-client needs in tests) ships no types.
declare module 'xhr2' {
  const XMLHttpRequest: unknown;
  export default XMLHttpRequest;
}
