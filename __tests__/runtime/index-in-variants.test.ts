/** The real index.ts, loaded the way each of PostHog's six runtimes loads it, delivers one event to the emulator. */
import { Emulator, startEmulator } from '../../tools/intercom/emulator'
import { RedisServer, startRedis } from '../../tools/lib/redis-server'
import { BACKLOG_CONFIG, BACKLOG_EMAIL, backlogEvents } from '../../tools/runtime/backlog'
import { startVariant } from '../../tools/runtime/start-variant'
import { VARIANT_IDS } from '../../tools/runtime/variants'

let emulator: Emulator
let redis: RedisServer
let contactId: string

beforeAll(async () => {
    ;[emulator, redis] = await Promise.all([startEmulator({ rateLimit: 100_000 }), startRedis()])
    contactId = emulator.addContact({ email: BACKLOG_EMAIL, role: 'user' }).id
})
afterAll(async () => {
    await Promise.all([emulator.close(), redis.stop()])
})
beforeEach(() => emulator.reset())

test.each(VARIANT_IDS)('variant %i: setup checks the token, onEvent delivers the event once', async (id) => {
    const runtime = await startVariant(id, {
        config: BACKLOG_CONFIG,
        emulatorUrl: emulator.url,
        redisUrl: redis.url,
        pluginId: 100 + id,
    })
    try {
        expect(runtime.setupError).toBeNull()
        const [event] = backlogEvents(1, { prefix: `deliver-v${id}` })
        const treatment = await runtime.onEvent(event)
        expect(treatment).toEqual({ status: 'ok', runs: 1, retried: 0, value: { status: 'delivered' } })

        const requests = emulator
            .requests()
            .map((request) => `${request.method} ${request.path} ${request.status}`)
        expect(requests[0]).toBe('GET /me 200')
        expect(requests).toContain('POST /events 202')
        const post = emulator.requests().find((request) => request.path === '/events')!
        expect(post.headers['intercom-version']).toBe('2.11')
        expect(post.body).toMatchObject({
            event_name: 'signed_up',
            created_at: Math.floor(Date.parse(event.timestamp) / 1000),
            id: contactId,
        })
        expect(emulator.events()).toEqual([expect.objectContaining({ contact_id: contactId, received: 1 })])
        expect(runtime.logs.filter((log) => log.level === 'error')).toEqual([])
        expect(runtime.cache === null).toBe(id >= 5)
    } finally {
        await runtime.teardown()
    }
})
