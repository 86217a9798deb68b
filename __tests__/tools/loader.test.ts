/** The vm2 loader of variants 1-4: the sandbox, the imports PostHog allows, and the redirected fetch. */
import { RetryError } from '@posthog/plugin-scaffold'
import { createHash } from 'node:crypto'
import * as path from 'node:path'

import {
    cdpFetch,
    hostNodeFetch,
    INTERCOM_HOSTS,
    regionNameOf,
    legacyImportHazards,
    loadPlugin,
    PluginExports,
    redirectingFetch,
    transpilePlugin,
} from '../../tools/runtime/load-plugin'
import { Loopback, Reply, startLoopback } from '../fixtures/loopback'

const fixture = (name: string): string => path.join(__dirname, '..', 'fixtures', `${name}.ts`)

/** Calls an exported function of a fixture, failing clearly when it is missing. */
function hook(plugin: PluginExports, name: string): (...args: unknown[]) => unknown {
    const fn = plugin[name]
    if (typeof fn !== 'function') throw new Error(`fixture does not export ${name}`)
    return fn as (...args: unknown[]) => unknown
}

describe('loadPlugin sandbox', () => {
    const plugin = loadPlugin({ file: fixture('sandbox-globals') })
    const globals = hook(plugin, 'describeGlobals')() as Record<string, string>

    test.each([
        'setTimeout',
        'setInterval',
        'setImmediate',
        'process',
        'AbortController',
        'TextEncoder',
        'URLSearchParams',
        'fetch',
        'structuredClone',
    ])('has no global %s', (name) => {
        expect(globals[name]).toBe('undefined')
    })

    test.each([
        ['console', 'object'],
        ['URL', 'function'],
        ['Buffer', 'function'],
        ['RetryError', 'function'],
    ])('has the global %s', (name, type) => {
        expect(globals[name]).toBe(type)
    })

    test('resolves the four allowed imports, with the scaffold RetryError as the global one', () => {
        expect(hook(plugin, 'useImports')()).toEqual({
            sha1: createHash('sha1').update('posthog').digest('hex'),
            query: 'a=1',
            fetch: 'function',
            sameRetryError: true,
        })
    })

    test('a plugin that calls setTimeout fails with a ReferenceError when it runs', async () => {
        const timer = loadPlugin({ file: fixture('uses-timer') })
        await expect(hook(timer, 'onEvent')()).rejects.toMatchObject({
            name: 'ReferenceError',
            message: 'setTimeout is not defined',
        })
    })

    test('a RetryError thrown inside is an instance of the scaffold class outside', async () => {
        const retrying = loadPlugin({ file: fixture('throws-retry') })
        const meta = { config: {}, global: {} }
        await expect(hook(retrying, 'onEvent')({ uuid: 'e1' }, meta)).rejects.toBeInstanceOf(RetryError)
    })

    test('without an injected fetch, node-fetch refuses every request', async () => {
        const caller = loadPlugin({ file: fixture('calls-intercom') })
        const meta = { config: { token: 't', host: 'api.intercom.io' } }
        await expect(hook(caller, 'onEvent')({ event: 'e', uuid: 'u' }, meta)).rejects.toThrow(
            'Network access is disabled in the plugin sandbox'
        )
    })

    test('finds hooks assigned to module.exports, as PostHog does', () => {
        const plugin = loadPlugin({ source: 'module.exports = { onEvent: () => "seen" }' })
        expect(hook(plugin, 'onEvent')()).toBe('seen')
    })
})

describe('loadPlugin imports', () => {
    test('a relative import fails to load with the message PostHog shows', () => {
        expect(() => loadPlugin({ file: fixture('relative-import') })).toThrow(
            "Cannot import './helper'! This package is not provided by PostHog in plugins."
        )
    })

    test.each([
        ["import { readFileSync } from 'fs'\nexport const a = readFileSync", 'fs'],
        ["import http from 'node:http'\nexport const a = http", 'node:http'],
        ["export { get } from 'lodash'", 'lodash'],
        ["const cp = require('child_process')\nexport const a = cp", 'child_process'],
        ["export const a = () => import('fs')", 'fs'],
    ])('refuses %j', (source, name) => {
        expect(() => loadPlugin({ source })).toThrow(`Cannot import '${name}'!`)
    })

    test('refuses a require whose module name is computed', () => {
        expect(() => loadPlugin({ source: "const n = 'fs'\nexport const a = require(n)" })).toThrow(
            'Cannot import a module whose name is computed at run time'
        )
    })

    test('records how each module is imported', () => {
        const { imports } = transpilePlugin(
            "import fetch from 'node-fetch'\nimport * as c from 'crypto'\nimport { URL as U } from 'url'\nexport const a = [fetch, c, U]"
        )
        expect(imports).toEqual([
            { source: 'node-fetch', forms: ['default'] },
            { source: 'crypto', forms: ['namespace'] },
            { source: 'url', forms: ['named'] },
        ])
    })

    test('flags the import forms the 2021-2023 plugin server resolved to undefined', () => {
        const { imports } = transpilePlugin(
            "import crypto from 'crypto'\nimport * as s from '@posthog/plugin-scaffold'\nimport { createHash } from 'crypto'\nimport fetch from 'node-fetch'\nexport const a = [crypto, s, createHash, fetch]"
        )
        expect(legacyImportHazards(imports)).toEqual([
            "default import of 'crypto' is undefined in the 2021-2023 plugin server",
            "namespace import of '@posthog/plugin-scaffold' is undefined in the 2021-2023 plugin server",
        ])
    })
})

describe('redirectingFetch', () => {
    let server: Loopback
    let reply: Reply | 'hang'

    beforeAll(async () => {
        server = await startLoopback(() => reply)
    })
    afterAll(() => server.close())
    beforeEach(() => {
        server.requests.length = 0
        reply = { status: 202 }
    })

    test.each(INTERCOM_HOSTS)('sends %s to the emulator, keeping path and query', async (host) => {
        const fetch = redirectingFetch(server.url, hostNodeFetch)
        const response = await fetch(`https://${host}/contacts/search?per_page=5`, {
            method: 'POST',
            headers: { Authorization: 'Bearer t' },
            body: '{}',
        })
        expect(response.status).toBe(202)
        expect(fetch.calls).toEqual([
            {
                host,
                method: 'POST',
                path: '/contacts/search?per_page=5',
                forwardedTo: `${server.url}/contacts/search?per_page=5`,
            },
        ])
        expect(server.requests).toHaveLength(1)
        expect(server.requests[0]).toMatchObject({
            method: 'POST',
            url: '/contacts/search?per_page=5',
            body: '{}',
        })
        expect(server.requests[0].headers).toMatchObject({
            authorization: 'Bearer t',
            'x-forwarded-host': host,
        })
    })

    test('can send each region to its own emulator', async () => {
        const fetch = redirectingFetch({ 'api.eu.intercom.io': `${server.url}/eu` }, hostNodeFetch)
        await fetch('https://api.eu.intercom.io/me')
        expect(server.requests.map((request) => request.url)).toEqual(['/eu/me'])
        await expect(fetch('https://api.intercom.io/me')).rejects.toThrow('no emulator serves this region')
    })

    test.each([
        ['https://example.com/collect', 'Refused request to example.com'],
        ['https://api.eu.intercom.com/events', 'Refused request to api.eu.intercom.com'],
        ['http://api.intercom.io/events', 'Refused http: request to api.intercom.io'],
    ])('refuses %s', async (url, message) => {
        const fetch = redirectingFetch(server.url, hostNodeFetch)
        await expect(fetch(url)).rejects.toThrow(message)
        expect(fetch.calls).toEqual([])
        expect(server.requests).toEqual([])
    })

    test('is what the sandboxed plugin gets for node-fetch', async () => {
        const fetch = redirectingFetch(server.url, hostNodeFetch)
        const plugin = loadPlugin({ file: fixture('calls-intercom'), fetch })
        const meta = { config: { token: 'secret', host: 'api.eu.intercom.io' } }
        await expect(hook(plugin, 'onEvent')({ event: 'signed_up', uuid: 'u1' }, meta)).resolves.toEqual({
            status: 'delivered',
        })
        expect(fetch.calls.map((call) => call.host)).toEqual(['api.eu.intercom.io'])
        expect(server.requests[0]).toMatchObject({
            method: 'POST',
            url: '/events?source=fixture',
            body: JSON.stringify({ event_name: 'signed_up', id: 'u1' }),
        })
    })

    test('refuses a sandboxed call to another host', async () => {
        const plugin = loadPlugin({
            file: fixture('calls-elsewhere'),
            fetch: redirectingFetch(server.url, hostNodeFetch),
        })
        await expect(hook(plugin, 'onEvent')()).rejects.toThrow('Refused request to example.com')
        expect(server.requests).toEqual([])
    })
})

describe('cdpFetch', () => {
    let server: Loopback
    let reply: Reply | 'hang'

    beforeAll(async () => {
        server = await startLoopback(() => reply)
    })
    afterAll(() => server.close())

    test('returns a plain object: status, lower-case headers, json(), and no ok or headers.get', async () => {
        reply = {
            status: 200,
            headers: { 'X-RateLimit-Remaining': '9', 'Content-Type': 'application/json' },
            body: '{"a":1}',
        }
        const response = await cdpFetch(hostNodeFetch)(server.url, { method: 'GET' })
        expect(response.status).toBe(200)
        expect(response.headers).toMatchObject({
            'x-ratelimit-remaining': '9',
            'content-type': 'application/json',
        })
        expect('ok' in response).toBe(false)
        expect('get' in response.headers).toBe(false)
        await expect(response.json()).resolves.toEqual({ a: 1 })
    })

    test('does not follow redirects', async () => {
        reply = { status: 302, headers: { Location: '/elsewhere' } }
        const response = await cdpFetch(hostNodeFetch)(`${server.url}/start`)
        expect(response.status).toBe(302)
        expect(server.requests.at(-1)?.url).toBe('/start')
    })

    test('lets the body be read once, like undici', async () => {
        reply = { status: 200, body: '{}' }
        const response = await cdpFetch(hostNodeFetch)(server.url)
        await response.text()
        await expect(response.json()).rejects.toThrow('Body is unusable')
    })

    test('gives up after timeoutMs', async () => {
        reply = 'hang'
        await expect(cdpFetch(hostNodeFetch)(server.url, { timeoutMs: 50 })).rejects.toThrow()
    })
})

test.each([
    ['api.intercom.io', 'US'],
    ['api.eu.intercom.io', 'Europe'],
    ['api.au.intercom.io', 'AU'],
    ['api.intercom.com', undefined],
])("GET /me's region name for %s, from index.ts's tables: %p", (host, name) => {
    expect(regionNameOf(host)).toBe(name)
})
