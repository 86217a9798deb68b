/** One factory for metas, events and Intercom replies, shared by the plugin's test files. */
import type { CacheExtension, ProcessedPluginEvent } from '@posthog/plugin-scaffold'
import nock from 'nock'
import { isDeepStrictEqual } from 'util'
import { FetchFn, Global, PluginConfig, PluginMeta, sealEmail, setupPlugin } from '../index'
import { createMemoryStore, createPluginCache } from '../tools/runtime/cache'

export const TOKEN = 'tok_SECRET_123'
export const US = 'https://api.intercom.io'
export const EU = 'https://api.eu.intercom.io'
export const AU = 'https://api.au.intercom.io'
export const OLD_TIMESTAMP = '2024-05-01T12:00:00.000Z'
export const OLD_UNIX = 1714564800

/** Every log line written by any plugin instance in this test file, for the leak assertions. */
export const allLogs: string[] = []

export interface TestMeta {
    meta: PluginMeta
    logs: string[]
}

export function makeMeta(
    config: PluginConfig = {},
    options: { cache?: CacheExtension; fetch?: FetchFn; person?: PluginMeta['person'] } = {}
): TestMeta {
    const logs: string[] = []
    const write = (level: string) => (message: unknown) => {
        logs.push(`${level}: ${String(message)}`)
        allLogs.push(String(message))
    }
    const meta: PluginMeta = {
        config: { intercomApiKey: TOKEN, triggeringEvents: 'signed_up,$identify', ...config },
        global: {} as Global,
        cache: options.cache,
        fetch: options.fetch,
        person: options.person,
        logger: {
            log: write('log'),
            info: write('info'),
            debug: write('debug'),
            warn: write('warn'),
            error: write('error'),
        },
    }
    return { meta, logs }
}

/** A set-up plugin instance (GET /me answered for the config's region). */
export async function setup(
    config: PluginConfig = {},
    options: Parameters<typeof makeMeta>[1] = {},
    host = US
): Promise<TestMeta> {
    const region = { [US]: 'US', [EU]: 'Europe', [AU]: 'AU' }[host]
    nock(host)
        .get('/me')
        .reply(200, { type: 'admin', id: '1', app: { type: 'app', region } })
    const made = makeMeta(config, options)
    await setupPlugin(made.meta)
    return made
}

export function makeEvent(overrides: Partial<ProcessedPluginEvent> = {}): ProcessedPluginEvent {
    return {
        event: 'signed_up',
        distinct_id: 'user-1',
        uuid: '0190c0de-0000-7000-8000-000000000001',
        team_id: 1,
        ip: null,
        timestamp: OLD_TIMESTAMP,
        properties: { email: 'Ada@Example.com' },
        ...overrides,
    }
}

export function contact(id: string, role: 'user' | 'lead' = 'user', updated_at = 1): object {
    return { type: 'contact', id, role, email: 'ada@example.com', updated_at }
}

/** Expects one search for `value` (an email, or an external ID) answered with `contacts`. */
export function expectSearch(
    value: string,
    contacts: object[],
    host = US,
    field: 'email' | 'external_id' = 'email'
): nock.Scope {
    return nock(host)
        .post('/contacts/search', { query: { field, operator: '=', value }, pagination: { per_page: 50 } })
        .reply(200, { type: 'list', data: contacts, total_count: contacts.length })
}

/** A retry-queue item as the plugin stores it: the signed_up event of `email`, sealed with TOKEN. */
export function queuedItem({
    email = 'ada@example.com',
    createdAt = OLD_UNIX,
    uuid = 'u1',
    attempts = 1,
}: { email?: string; createdAt?: number; uuid?: string; attempts?: number } = {}): object {
    return {
        draft: { event_name: 'signed_up', created_at: createdAt, metadata: {} },
        sealedEmail: sealEmail(email, TOKEN),
        uuid,
        attempts,
        queuedAt: Date.now(),
    }
}

/** Intercom's error body. */
export const errorBody = (code: string, message: string) => ({
    type: 'error.list',
    errors: [{ code, message }],
})

/** Expects one request whose JSON body is exactly `body`. */
export function expectCall(
    method: 'post' | 'put',
    path: string,
    body: object,
    reply: object | string = {},
    status = 200,
    host = US,
    headers: Record<string, string> = {}
): nock.Scope {
    const scope = nock(host)
    const matches = (received: nock.Body) => isDeepStrictEqual(received, body)
    return (method === 'post' ? scope.post(path, matches) : scope.put(path, matches)).reply(
        status,
        reply,
        headers
    )
}

/** Expects one POST /events whose body is exactly `body`; a refusal carries Intercom's error body. */
export function expectEvent(
    body: object,
    status = 202,
    host = US,
    headers: Record<string, string> = {}
): nock.Scope {
    const reply = status === 202 ? '' : errorBody('x', 'refused')
    return expectCall('post', '/events', body, reply, status, host, headers)
}

/** PostHog's meta.cache as the harness reproduces it (missing keys read null), recording every key and value written. */
export function memoryCache(): CacheExtension & { written: string[] } {
    const store = createMemoryStore()
    const written: string[] = []
    const recording = {
        ...store,
        set: (key: string, value: string, ttl?: number) => (
            written.push(key, value),
            store.set(key, value, ttl)
        ),
        lpush: (key: string, values: string[]) => (written.push(key, ...values), store.lpush(key, values)),
    }
    return Object.assign(createPluginCache(recording, 'plugin:') as unknown as CacheExtension, { written })
}

/**
 * No real network in a test file, and every expected request made. nock patches Node's shared `http`
 * module, so the network is given back after the file, for the loopback suites that run next.
 */
export function useNock(): void {
    beforeAll(() => nock.disableNetConnect())
    afterEach(() => {
        const pending = nock.pendingMocks()
        nock.cleanAll()
        expect(pending).toEqual([])
    })
    afterAll(() => nock.enableNetConnect())
}
