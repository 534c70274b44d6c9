/** Resolves after SIGINT/SIGTERM once `close` has run; a second signal exits at once. */
export function waitForShutdown(close: () => Promise<void>): Promise<void> {
  return new Promise((resolve) => {
    let closing = false;
    const onSignal = (sig: NodeJS.Signals) => {
      if (closing) process.exit(130);
      closing = true;
      console.error(`\n${sig} received: stopping (again to force)`);
      close().then(resolve, (e: unknown) => {
        console.error('error while stopping:', e);
        resolve();
      });
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}
