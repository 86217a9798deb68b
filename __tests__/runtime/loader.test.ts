/** The variant 1-4 loader (PostHog's Babel transforms on vm2), checked with fixture plugins.
 *
 * Small fixture plugins check the imports refused, loop and promise timeouts, the globals given and the 2021
 * guard's double evaluation.
 */
import nock from 'nock'
import { readFileSync } from 'node:fs'
import * as path from 'node:path'
import SANDBOX_ABSENT from '../../tools/runtime/sandbox-absent-globals.json'

import { consoleTo, DEFAULT_PLUGIN_FILE, FetchFn } from '../../tools/runtime/load-plugin'
import { isRetryErrorFromVm, loadSandboxed, SandboxedPlugin } from '../../tools/runtime/sandbox'
import { startVariant, VariantRuntime } from '../../tools/runtime/start-variant'
import { doubleEvaluatedAwaits, transformPluginCode } from '../../tools/runtime/transforms'
import { VARIANTS, VariantId } from '../../tools/runtime/variants'

const fixture = (name: string): string =>
    readFileSync(path.join(__dirname, '..', 'fixtures', `${name}.ts`), 'utf8')
const SANDBOXED: VariantId[] = [1, 2, 3, 4]
const refuse: FetchFn = async () => {
    throw new Error('no network in this test')
}
const quiet = consoleTo(() => undefined)

const loaded: SandboxedPlugin[] = []
function load(id: VariantId, source: string, taskTimeoutSeconds?: number): SandboxedPlugin {
    const plugin = loadSandboxed({
        source,
        variant: VARIANTS[id],
        fetch: refuse,
        console: quiet,
        meta: {},
        taskTimeoutSeconds,
    })
    loaded.push(plugin)
    return plugin
}
afterEach(() => {
    for (const plugin of loaded.splice(0)) plugin.dispose()
    nock.cleanAll()
})
beforeAll(() => nock.disableNetConnect())
afterAll(() => nock.enableNetConnect())

describe('replace-imports', () => {
    test.each(SANDBOXED)('variant %i refuses a module PostHog does not provide, at load time', (id) => {
        expect(() => load(id, `import { readFileSync } from 'fs'\nexport const x = readFileSync`)).toThrow(
            "Cannot import 'fs'! This package is not provided by PostHog in plugins."
        )
    })

    test('later versions also refuse require() of an unknown module; 2021 leaves it to fail at run time', () => {
        expect(() => load(2, `const fs = require('fs')\nexport const x = fs`)).toThrow("Cannot import 'fs'!")
        expect(() => load(1, `const fs = require('fs')\nexport const x = fs`)).toThrow(
            /require is not defined/
        )
    })

    test('2021 reads default imports as `.default` of the host module: crypto has none, node-fetch has', async () => {
        const source = `import crypto from 'crypto'\nimport fetch from 'node-fetch'\nexport async function onEvent() { return [typeof crypto, typeof fetch] }`
        expect(await load(1, source).methods.onEvent!({})).toEqual(['undefined', 'function'])
        expect(await load(3, source).methods.onEvent!({})).toEqual(['object', 'function'])
    })

    test('imports become lookups in the frozen host table', () => {
        const code = transformPluginCode(`import { createHash } from 'crypto'\nexport const h = createHash`, {
            importNames: ['crypto'],
            guard: 'string-name',
            imports: 'module-itself',
        })
        expect(code).toContain('const createHash = __pluginHostImports["crypto"]["createHash"];')
    })
})

describe('loop-timeout and promise-timeout', () => {
    test('a loop throws after the task timeout, naming its line', async () => {
        const plugin = load(3, fixture('runtime-endless-loop'), 1)
        await expect(plugin.methods.onEvent!({})).rejects.toThrow(
            'Script execution timed out after looping for 1 second on line 4:4'
        )
    })

    test.each([
        [1, false],
        [3, true],
    ] as const)(
        'variant %i: an await that never settles times out (a RetryError: %s)',
        async (id, isRetry) => {
            const failure = await load(id, fixture('runtime-never-settles'), 1).methods.onEvent!({}).catch(
                (error: unknown) => error
            )
            expect((failure as Error).name).toBe('TimeoutError')
            expect((failure as Error).message).toMatch(
                /^Script execution timed out after promise waited for 1 second/
            )
            expect(isRetryErrorFromVm(failure, VARIANTS[id])).toBe(isRetry)
        }
    )

    test('2021 passes the callee expression to the guard; later versions a string', () => {
        const source = `export async function f(a) { await a.b().c(); a.p.then(() => 1) }`
        const options = { importNames: [], loopTimeoutSeconds: 30 }
        const old = transformPluginCode(source, {
            ...options,
            guard: 'callee-2021',
            imports: 'default-member-2021',
        })
        const later = transformPluginCode(source, {
            ...options,
            guard: 'string-name',
            imports: 'module-itself',
        })
        expect(old).toContain('await __asyncGuard(a.b().c(), a.b().c);')
        expect(old).toContain('__asyncGuard(a.p).then(() => 1);')
        expect(later).toContain('await __asyncGuard(a.b().c(), "await on line 1:29");')
        expect(later).toContain('__asyncGuard(a.p, "Promise.then on line 1:46").then(() => 1);')
    })

    test.each([
        [1, 2],
        [2, 1],
        [3, 1],
        [4, 1],
    ] as const)('variant %i: `await api.open().read()` opens %i time(s)', async (id, opened) => {
        expect(await load(id, fixture('runtime-chained-await')).methods.onEvent!({})).toEqual({ opened })
    })
})

/** The least event a runtime accepts: the probes only look at what the runtime gives them. */
const BARE_EVENT = { uuid: 'u', event: 'e', distinct_id: 'd', timestamp: '', properties: {} }

test.each(SANDBOXED)(
    'variant %i: every global that eslint forbids in index.ts is absent from the sandbox (and present in Node)',
    async (id) => {
        const names: string[] = SANDBOX_ABSENT.globals
        const source = `export async function onEvent(event, meta) {
            const scope = globalThis
            return meta.config.names.split(',').map((name) => name + ':' + typeof scope[name]).join(',')
        }`
        const runtime = await startVariant(id, { config: { names: names.join(',') }, source })
        try {
            const treatment = await runtime.onEvent(BARE_EVENT)
            expect(String(treatment.value).split(',')).toEqual(names.map((name) => `${name}:undefined`))
        } finally {
            await runtime.teardown()
        }
        const host = globalThis as Record<string, unknown>
        expect(names.filter((name) => name !== 'require' && host[name] === undefined)).toEqual([])
    }
)

describe('what the VM gives a plugin', () => {
    const runtimes: VariantRuntime[] = []
    afterAll(async () => {
        for (const runtime of runtimes) await runtime.teardown()
    })

    test.each(SANDBOXED)(
        'variant %i: frozen globals only, meta of its era, node-fetch answers',
        async (id) => {
            nock('https://api.intercom.io')
                .post('/probe')
                .reply(200, { type: 'probe' }, { 'X-RateLimit-Remaining': '7' })
            const runtime = await startVariant(id, { config: {}, source: fixture('runtime-probe') })
            runtimes.push(runtime)
            const treatment = await runtime.onEvent(BARE_EVENT)
            expect(treatment.status).toBe('ok')
            const probe = JSON.parse(treatment.value as string)
            expect(probe.globals).toEqual({
                setTimeout: 'undefined',
                setInterval: 'undefined',
                process: 'undefined',
                AbortController: 'undefined',
                TextEncoder: 'undefined',
                URLSearchParams: 'undefined',
                Buffer: 'function',
                URL: 'function',
                RetryError: 'function',
                fetch: 'function',
            })
            const keys = [...VARIANTS[id].metaKeys].sort()
            expect(probe.setupKeys).toEqual(keys)
            expect(probe.eventKeys).toEqual(keys)
            expect(probe.answer).toEqual({
                status: 200,
                hasOk: true,
                headersGet: 'function',
                remaining: '7',
                body: { type: 'probe' },
            })
            expect(nock.isDone()).toBe(true)
        }
    )

    test('variant 4 froze the curried vmFetch as the global fetch: calling it gives a function', async () => {
        const source = `export async function onEvent() { return [typeof fetch('https://api.intercom.io/me'), typeof (await fetch)] }`
        expect(await load(4, source).methods.onEvent!({})).toEqual(['function', 'function'])
    })

    test('runEveryMinute is gathered as a scheduled task, and only variants 1-3 call it', async () => {
        const source = `export async function onEvent() {}\nexport async function runEveryMinute() { return 'ran' }`
        for (const id of SANDBOXED) {
            const runtime = await startVariant(id, { config: {}, source })
            runtimes.push(runtime)
            expect(runtime.runEveryMinute === undefined).toBe(id === 4)
            if (runtime.runEveryMinute) expect((await runtime.runEveryMinute()).value).toBe('ran')
        }
    })
})

describe('code that 2021 images run twice', () => {
    test('the finder flags `await api.open().read()` and not a plain method call', () => {
        expect(doubleEvaluatedAwaits(fixture('runtime-chained-await'))).toEqual([
            { line: 11, callee: 'api.open().read' },
        ])
        expect(doubleEvaluatedAwaits('async function f(c) { await c.get("k"); await g(h()) }')).toEqual([])
    })

    test('index.ts awaits no chained call whose callee the 2021 guard would call a second time', () => {
        expect(doubleEvaluatedAwaits(readFileSync(DEFAULT_PLUGIN_FILE, 'utf8'))).toEqual([])
    })
})
