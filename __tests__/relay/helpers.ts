/** Builds in-process relays for the tests: settings against the emulator, logs captured for leak checks. */
import pino from 'pino'
import { Writable } from 'node:stream'
import { RelaySettings } from '../../relay/config'
import { TEST_SECRET, TEST_TOKEN } from '../../relay/harness'
import { createRelay, Relay } from '../../relay/server'

export const TRIGGERING = 'signed_in,purchase_completed'

export function settingsFor(options: {
    emulatorUrl: string
    redisUrl?: string | null
    plugin?: Record<string, string>
    relay?: Partial<RelaySettings>
}): RelaySettings {
    return {
        plugin: { intercomApiKey: TEST_TOKEN, triggeringEvents: TRIGGERING, ...options.plugin },
        host: '127.0.0.1',
        port: 0,
        secret: TEST_SECRET,
        redisUrl: options.redisUrl ?? null,
        redisPrefix: `relay-test-${Math.random().toString(36).slice(2)}:`,
        bodyLimitBytes: 64 * 1024,
        requestTimeoutMs: 1000,
        drainIntervalMs: 60_000,
        retryIntervalMs: 60_000,
        intercomOverride: options.emulatorUrl,
        logLevel: 'debug',
        ...options.relay,
    }
}

export interface TestRelay {
    relay: Relay
    url: string
    /** Every log line written so far. */
    logs: string[]
}

export async function startRelay(settings: RelaySettings): Promise<TestRelay> {
    const logs: string[] = []
    const stream = new Writable({
        write(chunk: Buffer, _encoding, done) {
            logs.push(chunk.toString('utf8'))
            done()
        },
    })
    const relay = await createRelay(settings, { logger: pino({ level: settings.logLevel }, stream) })
    const url = await relay.listen()
    return { relay, url, logs }
}
