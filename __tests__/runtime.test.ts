/** The runtime check: index.ts loads and delivers in a sandbox shaped like PostHog's.
 *
 * The real index.ts, transpiled by Babel as PostHog does and run in a sandbox
 * with no timers and no `process` whose `require` knows only the four modules PostHog provides,
 * loads and delivers an event, with both HTTP clients PostHog has handed plugins: the imported
 * node-fetch (plugin server) and `meta.fetch` returning a plain object (cdp executor).
 */
import { readFileSync } from 'node:fs'
import { Response } from 'node-fetch'

import { createMemoryStore, createPluginCache } from '../tools/runtime/cache'
import { createMemoryStorage } from '../tools/runtime/harness'
import {
    ALLOWED_IMPORTS,
    CdpFetchOptions,
    CdpResponse,
    ConsoleLike,
    DEFAULT_PLUGIN_FILE,
    FetchFn,
    FetchInit,
    legacyImportHazards,
    loadPlugin,
    PluginExports,
    PluginMeta,
    toHeaderRecord,
    transpilePlugin,
} from '../tools/runtime/load-plugin'

interface SeenRequest {
    url: string
    method: string
    headers: Record<string, string>
    body: unknown
}

interface Answer {
    status: number
    body: string
}

const CONFIG = { intercomApiKey: 'test-token', triggeringEvents: 'signed_up', region: 'US' }

const EVENT = {
    event: 'signed_up',
    distinct_id: 'u1',
    uuid: '018f3a4e-0000-7000-8000-000000000001',
    team_id: 1,
    timestamp: '2024-05-01T12:00:00.000Z',
    properties: { email: 'Ada@Example.com', plan: 'pro' },
}

/** Intercom's answers for the three calls a delivery needs; anything else is a 404. */
function intercomAnswer(method: string, url: string): Answer {
    const route = `${method} ${new URL(url).pathname}`
    if (route === 'GET /me')
        return { status: 200, body: JSON.stringify({ type: 'admin', app: { region: 'US' } }) }
    if (route === 'POST /contacts/search') {
        const contact = { type: 'contact', id: 'c1', role: 'user', email: 'ada@example.com', updated_at: 1 }
        return { status: 200, body: JSON.stringify({ type: 'list', data: [contact], total_count: 1 }) }
    }
    if (route === 'POST /events') return { status: 202, body: '' }
    const notFound = { type: 'error.list', errors: [{ code: 'not_found', message: 'Resource Not Found' }] }
    return { status: 404, body: JSON.stringify(notFound) }
}

function lowerCaseKeys(headers: Record<string, string>): Record<string, string> {
    return Object.fromEntries(Object.entries(headers).map(([name, value]) => [name.toLowerCase(), value]))
}

function recordRequest(
    seen: SeenRequest[],
    url: string,
    method: string,
    headers: Record<string, string>,
    body?: string
) {
    seen.push({ url, method, headers: lowerCaseKeys(headers), body: body ? JSON.parse(body) : undefined })
}

/** node-fetch as the plugin server injected it: real node-fetch Responses. */
function nodeFetchIntercom(seen: SeenRequest[]): FetchFn {
    return async (input: string | URL, init: FetchInit = {}) => {
        const url = String(input)
        const method = (init.method ?? 'GET').toUpperCase()
        recordRequest(seen, url, method, toHeaderRecord(init.headers), init.body)
        const answer = intercomAnswer(method, url)
        return new Response(answer.body, {
            status: answer.status,
            headers: { 'content-type': 'application/json' },
        })
    }
}

/** `meta.fetch` as PostHog's cdp executor passes it: a plain object, no `ok`, no `headers.get`. */
function cdpIntercom(seen: SeenRequest[]): (url: string, options?: CdpFetchOptions) => Promise<CdpResponse> {
    return async (url, options = {}) => {
        const method = (options.method ?? 'GET').toUpperCase()
        recordRequest(seen, url, method, options.headers ?? {}, options.body)
        const answer = intercomAnswer(method, url)
        return {
            status: answer.status,
            headers: { 'content-type': 'application/json' },
            json: async () => JSON.parse(answer.body),
            text: async () => answer.body,
        }
    }
}

/** Keeps the plugin's log out of the test output; the lines are not asserted here. */
const quietConsole: ConsoleLike = {
    log: () => {},
    info: () => {},
    warn: () => {},
    error: () => {},
    debug: () => {},
}

interface Runtime {
    plugin: PluginExports
    meta: PluginMeta
    event: Record<string, unknown>
}

function pluginServerRuntime(seen: SeenRequest[]): Runtime {
    return {
        plugin: loadPlugin({ fetch: nodeFetchIntercom(seen), console: quietConsole }),
        meta: {
            config: { ...CONFIG },
            global: {},
            attachments: {},
            cache: createPluginCache(createMemoryStore(), '@plugin/1/1/'),
            storage: createMemoryStorage(),
            jobs: {},
            metrics: {},
        },
        event: { ...EVENT, ip: null, properties: { ...EVENT.properties } },
    }
}

function cdpRuntime(seen: SeenRequest[]): Runtime {
    return {
        plugin: loadPlugin({ console: quietConsole }),
        meta: { config: { ...CONFIG }, global: {}, logger: quietConsole, fetch: cdpIntercom(seen) },
        event: {
            ...EVENT,
            ip: null,
            properties: { ...EVENT.properties },
            person: { uuid: 'p1', team_id: 1, properties: { email: 'Ada@Example.com' }, created_at: '' },
        },
    }
}

describe('index.ts in the PostHog sandbox', () => {
    const transpiled = transpilePlugin(readFileSync(DEFAULT_PLUGIN_FILE, 'utf8'))

    test('requires nothing but the four modules PostHog provides', () => {
        const required = [...transpiled.code.matchAll(/\brequire\s*\(\s*(['"`])(.*?)\1\s*\)/g)].map(
            (m) => m[2]
        )
        expect(required.filter((name) => !(ALLOWED_IMPORTS as readonly string[]).includes(name))).toEqual([])
        // Every require names its module literally, so the list above is complete.
        expect(transpiled.code.match(/\brequire\s*\(/g)?.length ?? 0).toBe(required.length)
    })

    test('imports only in forms that every runtime resolves', () => {
        expect(legacyImportHazards(transpiled.imports)).toEqual([])
    })

    test.each([
        ['plugin-server (node-fetch, meta.cache)', pluginServerRuntime],
        ['cdp (meta.fetch, no cache)', cdpRuntime],
    ])('%s: loads and delivers an event', async (_name, makeRuntime) => {
        const seen: SeenRequest[] = []
        const { plugin, meta, event } = makeRuntime(seen)
        expect(typeof plugin.setupPlugin).toBe('function')
        expect(typeof plugin.onEvent).toBe('function')

        await plugin.setupPlugin?.(meta)
        const outcome = await plugin.onEvent?.(event, meta)

        expect(outcome).toMatchObject({ status: 'delivered' })
        expect(seen.every((request) => request.url.startsWith('https://api.intercom.io/'))).toBe(true)
        const posted = seen.filter((request) => request.method === 'POST' && request.url.endsWith('/events'))
        expect(posted).toHaveLength(1)
        expect(posted[0].url).toBe('https://api.intercom.io/events')
        expect(posted[0].headers).toMatchObject({
            authorization: 'Bearer test-token',
            accept: 'application/json',
        })
        expect(posted[0].body).toMatchObject({ event_name: 'signed_up', created_at: 1714564800, id: 'c1' })
        // Exactly one identifier: the contact id.
        expect(posted[0].body).not.toHaveProperty('email')
        expect(posted[0].body).not.toHaveProperty('user_id')
    })
})
