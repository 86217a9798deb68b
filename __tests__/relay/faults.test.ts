/** Relay fault tests with real processes: kill -9, Redis restarts, two instances.
 *
 * Kill -9 of an instance under load, Redis restarted mid-run, two instances on one
 * Redis. Each ends by counting what was acknowledged (2xx) against what Intercom (the emulator) received.
 */
import Redis from 'ioredis'
import { Emulator, startEmulator } from '../../tools/intercom/emulator'
import { redisAvailable, RedisServer, startRedis } from '../../tools/lib/redis-server'
import {
    postJson,
    relayEnv,
    RelayProcess,
    sleep,
    spawnRelay,
    waitFor,
    webhookItem,
} from '../../relay/harness'
import { WebhookItem } from '../../relay/payload'
import { CACHE_KEYS } from '../../index'
import { settingsFor, startRelay, TestRelay } from './helpers'

const describeRedis = redisAvailable() ? describe : describe.skip
const PEOPLE = 40
const BASE_SECONDS = Date.parse('2025-06-01T00:00:00Z') / 1000

const email = (person: number) => `person${person}@example.com`

/** Event i: its own created_at, so that what Intercom stored can be matched back to it. */
function eventAt(i: number, person = i % PEOPLE): WebhookItem {
    return webhookItem({
        uuid: `ev-${i}`,
        email: email(person),
        distinctId: `user-${person}`,
        timestamp: new Date((BASE_SECONDS + i) * 1000).toISOString(),
    })
}

const storedSeconds = (emulator: Emulator) => new Set(emulator.events().map((event) => event.created_at))

interface Sent {
    acknowledged: Set<number>
    responses: Record<string, number>
}

/**
 * Sends events 0..count-1 with `concurrency` at a time, each to the next target; a 503 or a dropped
 * connection is retried on the next target, as PostHog retries (here without giving up).
 */
async function sendAll(
    count: number,
    concurrency: number,
    targets: () => string[],
    onAck?: (n: number) => void
) {
    const sent: Sent = { acknowledged: new Set(), responses: {} }
    let next = 0
    let turn = 0
    const worker = async () => {
        while (next < count) {
            const i = next++
            for (;;) {
                const live = targets()
                const res = await postJson(`${live[turn++ % live.length]}/events`, eventAt(i))
                sent.responses[res.status] = (sent.responses[res.status] ?? 0) + 1
                if (res.status === 200) break
                await sleep(50)
            }
            sent.acknowledged.add(i)
            onAck?.(sent.acknowledged.size)
        }
    }
    await Promise.all(Array.from({ length: concurrency }, worker))
    return sent
}

function lost(sent: Sent, emulator: Emulator): number[] {
    const stored = storedSeconds(emulator)
    return [...sent.acknowledged].filter((i) => !stored.has(BASE_SECONDS + i))
}

let emulator: Emulator
let redis: RedisServer
let client: Redis

beforeAll(async () => {
    redis = await startRedis()
    client = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 })
    await client.connect()
})
afterAll(async () => {
    client.disconnect()
    await redis.stop()
})
beforeEach(async () => {
    await client.flushall().catch(() => undefined)
    emulator = await startEmulator({
        contacts: Array.from({ length: PEOPLE }, (_, person) => ({
            id: `c-${person}`,
            email: email(person),
            role: 'user' as const,
        })),
    })
})
afterEach(async () => {
    await emulator.close()
})

describeRedis('faults', () => {
    test('kill -9 of an instance under load: no acknowledged event is lost', async () => {
        const env = relayEnv({
            emulatorUrl: emulator.url,
            redisUrl: redis.url,
            extra: { RELAY_DRAIN_INTERVAL_MS: '200', RELAY_RETRY_INTERVAL_MS: '300', LOG_LEVEL: 'info' },
        })
        const instances: RelayProcess[] = await Promise.all([spawnRelay(env), spawnRelay(env)])
        const [victim, survivor] = instances
        let live = instances.map((instance) => instance.url)
        try {
            emulator.configure({ errorRate: 0.2 }) // some events get parked, and drains run all along
            const sent = await sendAll(
                300,
                6,
                () => live,
                (acked) => {
                    if (acked === 120) {
                        process.kill(victim.pid, 'SIGKILL')
                        live = [survivor.url]
                    }
                }
            )
            expect(await victim.exited).toBe('SIGKILL')
            // A drain lock the victim held outlives it for its TTL (60 s): let that time pass, as the queue
            // contract test does, so that the survivor's drain is what is measured here.
            for (const key of await client.keys(`*${CACHE_KEYS.drainLock(Date.now())}`))
                await client.pexpire(key, 1)
            emulator.configure({ errorRate: 0 })
            await waitFor(() => lost(sent, emulator).length === 0, 40_000, 'the survivor to drain the queue')
            expect(lost(sent, emulator)).toEqual([])
            expect(sent.acknowledged.size).toBe(300)
            expect(survivor.output()).not.toContain('@example.com')
        } finally {
            for (const instance of instances) instance.child.kill('SIGKILL')
            await Promise.all(instances.map((instance) => instance.exited))
        }
    }, 90_000)

    test('SIGTERM: the request in flight is answered, the process exits 0, nothing more is accepted', async () => {
        const instance = await spawnRelay(relayEnv({ emulatorUrl: emulator.url, redisUrl: redis.url }))
        try {
            emulator.configure({ latencyMs: 400 })
            const inFlight = postJson(`${instance.url}/events`, eventAt(1))
            await sleep(150)
            instance.child.kill('SIGTERM')
            expect(await inFlight).toMatchObject({
                status: 200,
                body: { results: [{ status: 'delivered' }] },
            })
            expect(await instance.exited).toBe('0')
            expect((await postJson(`${instance.url}/events`, eventAt(2))).status).toBe(0)
            expect(instance.output()).toContain('relay stopped')
        } finally {
            instance.child.kill('SIGKILL')
        }
    }, 30_000)

    test('Redis restarted mid-run: 503s meanwhile, then everything goes through', async () => {
        const relay: TestRelay = await startRelay(
            settingsFor({ emulatorUrl: emulator.url, redisUrl: redis.url })
        )
        try {
            const sending = sendAll(200, 4, () => [relay.url])
            await waitFor(() => emulator.events().length >= 50, 20_000, 'the first events')
            await redis.restart({ downMs: 500 })
            const sent = await sending
            expect(sent.responses['503']).toBeGreaterThan(0)
            expect(lost(sent, emulator)).toEqual([])
            expect(sent.acknowledged.size).toBe(200)
        } finally {
            await relay.relay.close()
        }
    }, 60_000)

    test('two instances on one Redis: every email searched once, every event delivered once', async () => {
        const settings = settingsFor({
            emulatorUrl: emulator.url,
            redisUrl: redis.url,
            relay: { redisPrefix: 'shared:' },
        })
        const relays = [await startRelay(settings), await startRelay(settings)]
        try {
            emulator.reset()
            // Five events of each person at once, spread over both instances.
            const items = Array.from({ length: PEOPLE * 5 }, (_, i) => eventAt(i, Math.floor(i / 5)))
            const answers = await Promise.all(
                items.map((item, i) => postJson(`${relays[i % 2].url}/events`, item))
            )
            expect(answers.map((answer) => answer.status)).toEqual(items.map(() => 200))
            expect(emulator.stats().searches).toBe(PEOPLE)
            expect(emulator.events()).toHaveLength(PEOPLE * 5)
            expect(emulator.events().every((event) => event.received === 1)).toBe(true)
        } finally {
            await Promise.all(relays.map((relay) => relay.relay.close()))
        }
    }, 60_000)
})
