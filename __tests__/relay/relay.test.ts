/** The relay end to end over HTTP: auth, every outcome, the 503 path, config at start, shutdown; real Redis and the emulator. */
import Redis from 'ioredis'
import pino from 'pino'
import { Emulator, startEmulator } from '../../tools/intercom/emulator'
import { redisAvailable, RedisServer, startRedis } from '../../tools/lib/redis-server'
import { PLUGIN_KEYS, pluginConfigFrom, relaySettingsFrom, envName } from '../../relay/config'
import { postJson, TEST_SECRET, webhookItem } from '../../relay/harness'
import { createRelay, secretMatches } from '../../relay/server'
import { nextDrainIn } from '../../relay/drain'
import { settingsFor, startRelay, TestRelay } from './helpers'
import pluginJson from '../../plugin.json'
import { writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import * as path from 'node:path'

const describeRedis = redisAvailable() ? describe : describe.skip

let emulator: Emulator
let redis: RedisServer
let current: TestRelay | null = null

beforeAll(async () => {
    redis = await startRedis()
})
afterAll(async () => {
    await redis.stop()
})
beforeEach(async () => {
    emulator = await startEmulator({
        contacts: [
            { id: 'c-ann', email: 'ann@example.com', role: 'user' },
            { id: 'c-lead', email: 'lead@example.com', role: 'lead' },
        ],
    })
})
afterEach(async () => {
    await current?.relay.close()
    current = null
    await emulator.close()
})

async function relayWith(options: Partial<Parameters<typeof settingsFor>[0]> = {}): Promise<TestRelay> {
    current = await startRelay(settingsFor({ emulatorUrl: emulator.url, redisUrl: redis.url, ...options }))
    return current
}

const ann = (uuid: string, extra: Partial<Parameters<typeof webhookItem>[0]> = {}) =>
    webhookItem({ uuid, email: 'ann@example.com', ...extra })

describeRedis('authentication', () => {
    test.each([
        ['no header', {}],
        ['a wrong secret', { 'x-relay-secret': 'not-the-secret-at-all' }],
        ['the secret with a suffix', { 'x-relay-secret': `${TEST_SECRET}x` }],
        ['an empty secret', { 'x-relay-secret': '' }],
    ])('%s: 401 and nothing sent to Intercom', async (_name, headers) => {
        const { url } = await relayWith()
        emulator.reset()
        const res = await postJson(`${url}/events`, ann('e1'), { headers })
        expect(res.status).toBe(401)
        expect(res.body).toEqual({ error: 'Unauthorized', message: 'missing or wrong x-relay-secret header' })
        expect(emulator.requests()).toEqual([])
    })

    test('the right secret is accepted; comparison does not depend on length', async () => {
        expect(secretMatches('abc', 'abc')).toBe(true)
        expect(secretMatches('abc', 'abcd')).toBe(false)
        expect(secretMatches('abc', ['abc'])).toBe(false)
        const { url } = await relayWith()
        expect((await postJson(`${url}/events`, ann('e1'))).status).toBe(200)
    })

    test('health, readiness and metrics need no secret and carry no personal data', async () => {
        const { url } = await relayWith()
        await postJson(`${url}/events`, ann('e1'))
        expect(await (await fetch(`${url}/healthz`)).json()).toEqual({ ok: true })
        expect(await (await fetch(`${url}/readyz`)).json()).toEqual({ ready: true, redis: true })
        const metrics = await (await fetch(`${url}/metrics`)).text()
        expect(metrics).toContain('relay_events_total{outcome="delivered",reason=""} 1')
        expect(metrics).toContain('relay_intercom_requests_total{status="202"} 1')
        expect(metrics).toContain('relay_retry_queue_length 0')
        expect(metrics).not.toContain('ann@example.com')
    })
})

describeRedis('outcomes', () => {
    test('delivered: the rendered default body becomes a data event on the contact', async () => {
        const { url } = await relayWith({ plugin: { metadataProperties: 'plan' } })
        const res = await postJson(`${url}/events`, ann('e1', { properties: { plan: 'pro' } }))
        expect(res).toMatchObject({
            status: 200,
            body: { ok: true, results: [{ uuid: 'e1', status: 'delivered' }] },
        })
        expect(emulator.events()).toEqual([
            {
                event_name: 'signed_in',
                created_at: Date.parse('2025-06-01T12:00:00Z') / 1000,
                contact_id: 'c-ann',
                metadata: { plan: 'pro' },
                received: 1,
            },
        ])
    })

    test("the person's properties are the email's last resort, as in PostHog's executor", async () => {
        const { url } = await relayWith()
        const item = webhookItem({ uuid: 'e2', email: null, personProperties: { email: 'lead@example.com' } })
        const res = await postJson(`${url}/events`, item)
        expect(res.body).toMatchObject({ results: [{ uuid: 'e2', status: 'delivered' }] })
        expect(emulator.events().map((e) => e.contact_id)).toEqual(['c-lead'])
    })

    test("PostHog's 2024 globals (event `name`, person `uuid`) are read too", async () => {
        const { url } = await relayWith()
        const older = {
            event: {
                uuid: 'o1',
                name: 'signed_in',
                distinct_id: 'd-o1',
                properties: {},
                timestamp: '2025-06-01T12:00:00Z',
                url: 'u',
            },
            person: { uuid: 'p-o1', name: 'Lead', url: 'u', properties: { email: 'lead@example.com' } },
        }
        expect((await postJson(`${url}/events`, older)).body).toMatchObject({
            results: [{ uuid: 'o1', status: 'delivered' }],
        })
        expect(emulator.events().map((e) => e.contact_id)).toEqual(['c-lead'])
    })

    test('skipped, with the reason: not triggering, no email, ignored domain', async () => {
        const { url } = await relayWith({ plugin: { ignoredEmailDomains: 'example.org' } })
        const res = await postJson(`${url}/events`, [
            ann('s1', { event: '$pageview' }),
            webhookItem({ uuid: 's2', email: null, personProperties: null }),
            webhookItem({ uuid: 's3', email: 'bob@sub.example.org' }),
        ])
        expect(res).toMatchObject({
            status: 200,
            body: {
                ok: true,
                results: [
                    { uuid: 's1', status: 'skipped', reason: 'not a triggering event' },
                    { uuid: 's2', status: 'skipped', reason: 'no valid email' },
                    { uuid: 's3', status: 'skipped', reason: 'ignored email domain' },
                ],
            },
        })
        expect(emulator.events()).toEqual([])
    })

    test('synced: a non-triggering event with $set updates the contact', async () => {
        const { url } = await relayWith({
            plugin: {
                contactSync: 'update existing contacts',
                personProperties: 'plan',
                createAttributes: 'Yes',
            },
        })
        const item = ann('y1', { event: '$set', properties: { $set: { plan: 'team' } } })
        const res = await postJson(`${url}/events`, item)
        expect(res.body).toMatchObject({ results: [{ uuid: 'y1', status: 'synced' }] })
        expect(emulator.contacts().find((c) => c.id === 'c-ann')?.custom_attributes).toEqual({ plan: 'team' })
    })

    test('queued: parked in Redis (2xx), then delivered by the drain', async () => {
        const relay = await relayWith()
        emulator.configure({ errorRate: 1 })
        const res = await postJson(`${relay.url}/events`, ann('q1'))
        expect(res).toMatchObject({
            status: 200,
            body: { results: [{ uuid: 'q1', status: 'queued', reason: 'transient' }] },
        })
        emulator.configure({ errorRate: 0 })
        expect(await relay.relay.drain()).toMatchObject({ delivered: 1, remaining: 0 })
        expect(emulator.events().map((e) => e.contact_id)).toEqual(['c-ann'])
    })

    test('refused for good: 2xx with the reason, so that PostHog does not resend it', async () => {
        const { url } = await relayWith()
        emulator.configure({ tokens: [] }) // the key is revoked after setup
        const res = await postJson(`${url}/events`, ann('r1'))
        expect(res.status).toBe(200)
        expect(res.body).toMatchObject({ ok: true, results: [{ uuid: 'r1', status: 'refused' }] })
        expect((res.body as { results: { reason: string }[] }).results[0].reason).toMatch(
            /Intercom rejected the API key \(401\)/
        )
    })

    test('503 with Retry-After while Redis is down, 200 again once it is back', async () => {
        const relay = await relayWith()
        await redis.kill()
        const down = await postJson(`${relay.url}/events`, ann('d1'))
        expect(down.status).toBe(503)
        expect(down.headers['retry-after']).toBe('2')
        expect(down.body).toMatchObject({ ok: false, results: [{ uuid: 'd1', status: 'retry' }] })
        expect((await fetch(`${relay.url}/readyz`)).status).toBe(503)
        await redis.start()
        let again = await postJson(`${relay.url}/events`, ann('d1'))
        for (let i = 0; again.status !== 200 && i < 40; i++) {
            await new Promise((resolve) => setTimeout(resolve, 100))
            again = await postJson(`${relay.url}/events`, ann('d1'))
        }
        expect(again.body).toMatchObject({ ok: true, results: [{ uuid: 'd1', status: 'delivered' }] })
    })

    test('a batch answers 503 when one event cannot be parked, and lists each result', async () => {
        const { url } = await relayWith({ redisUrl: null })
        emulator.configure({ errorRate: 1 })
        const res = await postJson(`${url}/events`, [ann('b1', { event: '$pageview' }), ann('b2')])
        expect(res.status).toBe(503)
        expect(res.body).toMatchObject({
            ok: false,
            results: [
                { uuid: 'b1', status: 'skipped' },
                { uuid: 'b2', status: 'retry', reason: 'transient: no Redis to park it in' },
            ],
        })
    })
})

describeRedis('shared state', () => {
    test("meta.cache keys live under the prefix, with PostHog's encoding (JSON values with EX, raw list items)", async () => {
        const prefix = 'relay-prefix-test:'
        const client = new Redis(redis.url)
        await client.flushall()
        const relay = await relayWith({ relay: { redisPrefix: prefix } })
        await postJson(`${relay.url}/events`, ann('k0'))
        emulator.configure({ errorRate: 1 })
        await postJson(`${relay.url}/events`, webhookItem({ uuid: 'k1', email: 'new@example.com' }))
        const keys = await client.keys('*')
        expect(keys.every((key) => key.startsWith(prefix))).toBe(true)
        const [contactKey] = await client.keys(`${prefix}cache:intercom:contact:*`)
        expect(await client.get(contactKey)).toBe('"c-ann"')
        expect(await client.ttl(contactKey)).toBeGreaterThan(0)
        const [raw] = await client.lrange(`${prefix}cache:intercom:retry-queue`, 0, -1)
        expect(JSON.parse(raw)).toMatchObject({ uuid: 'k1', attempts: 1 })
        expect(raw).not.toContain('new@example.com')
        client.disconnect()
    })

    test('drains again at once while events wait untried, a minute after retries, else at the tick', () => {
        const timing = { intervalMs: 1000, retryMs: 60_000 }
        expect(nextDrainIn({ retried: 0, remaining: 500 }, timing)).toBe(100)
        expect(nextDrainIn({ retried: 3, remaining: 3 }, timing)).toBe(60_000)
        expect(nextDrainIn({ retried: 0, remaining: 0 }, timing)).toBe(1000)
        expect(nextDrainIn(null, timing)).toBe(1000)
    })
})

describeRedis('start and stop', () => {
    test("bad plugin config stops the start with the plugin's own message", async () => {
        const settings = settingsFor({ emulatorUrl: emulator.url, plugin: { region: 'Mars' } })
        const quiet = { logger: pino({ level: 'silent' }) }
        await expect(createRelay(settings, quiet)).rejects.toThrow(/Region/)
        emulator.configure({ region: 'Europe' })
        await expect(createRelay(settingsFor({ emulatorUrl: emulator.url }), quiet)).rejects.toThrow(
            'Your Intercom workspace is hosted in the EU region but the plugin is set to US: set "Region" to EU.'
        )
    })

    test('close() finishes a request in flight and then refuses connections', async () => {
        const { relay, url } = await relayWith()
        emulator.configure({ latencyMs: 300 })
        const inFlight = postJson(`${url}/events`, ann('f1'))
        await new Promise((resolve) => setTimeout(resolve, 100))
        const closed = relay.close()
        current = null
        expect(await inFlight).toMatchObject({ status: 200, body: { results: [{ status: 'delivered' }] } })
        await closed
        expect((await postJson(`${url}/events`, ann('f2'))).status).toBe(0)
    })
})

describe('configuration', () => {
    test("the keys are plugin.json's, in either spelling, from the environment or a file", () => {
        expect(PLUGIN_KEYS).toEqual(pluginJson.config.flatMap((field) => ('key' in field ? [field.key] : [])))
        expect(envName('intercomApiKey')).toBe('INTERCOM_API_KEY')
        const dir = mkdtempSync(path.join(tmpdir(), 'relay-config-'))
        const file = path.join(dir, 'config.json')
        writeFileSync(file, JSON.stringify({ triggeringEvents: 'a,b', region: 'EU' }))
        expect(
            pluginConfigFrom({
                RELAY_CONFIG_FILE: file,
                INTERCOM_API_KEY: 'k',
                region: 'AU',
                IGNORED_EMAIL_DOMAINS: 'x.com',
            })
        ).toEqual({
            intercomApiKey: 'k',
            region: 'AU',
            triggeringEvents: 'a,b',
            ignoredEmailDomains: 'x.com',
        })
        writeFileSync(file, JSON.stringify({ triggeringEvent: 'typo' }))
        expect(() => pluginConfigFrom({ RELAY_CONFIG_FILE: file })).toThrow(/unknown keys: triggeringEvent/)
    })

    test('refuses to start without a secret unless told it is local; the emulator override is loopback only', () => {
        expect(() => relaySettingsFrom({})).toThrow(/RELAY_SECRET is not set/)
        expect(() => relaySettingsFrom({ RELAY_SECRET: 'short' })).toThrow(/at least 16/)
        expect(relaySettingsFrom({ RELAY_INSECURE_LOCAL: '1' }).secret).toBeNull()
        expect(relaySettingsFrom({ RELAY_SECRET: TEST_SECRET }).secret).toBe(TEST_SECRET)
        expect(() =>
            relaySettingsFrom({
                RELAY_SECRET: TEST_SECRET,
                RELAY_INTERCOM_EMULATOR_URL: 'http://intercom.evil:80',
            })
        ).toThrow(/loopback/)
        expect(() => relaySettingsFrom({ RELAY_SECRET: TEST_SECRET, PORT: 'x' })).toThrow(
            /PORT must be an integer/
        )
    })
})
