/** Starts the relay: `npm run serve` (tsx) or, compiled, `node dist/relay/main.js`. Stops cleanly on SIGTERM/SIGINT. */
import { relaySettingsFrom, RelayConfigError } from './config'
import { createRelay } from './server'

async function main(): Promise<void> {
    let relay
    try {
        relay = await createRelay(relaySettingsFrom(process.env))
    } catch (error) {
        // Config errors, the plugin's own setup messages, or Redis unreachable at start: nothing to serve.
        const kind = error instanceof RelayConfigError ? 'configuration' : 'setup'
        process.stderr.write(`posthog-intercom relay: ${kind} error: ${(error as Error).message}\n`)
        process.exit(1)
    }
    const stop = (signal: string) => {
        relay.logger.info({ signal }, 'stopping: no new requests, finishing those in flight')
        relay.close().then(
            () => process.exit(0),
            () => process.exit(1)
        )
    }
    process.once('SIGTERM', () => stop('SIGTERM'))
    process.once('SIGINT', () => stop('SIGINT'))
    await relay.listen()
}

void main()
