/** How each runtime treats a hook's outcome (CDP meta, fetch, test runs, RetryError).
 *
 * The CDP executor's meta, fetch and test-function answers (variants 5-6), and the RetryError policies (variant 2's 5 tries, variant 6's 3 runs, none elsewhere).
 */
import nock from 'nock'
import { readFileSync } from 'node:fs'
import * as path from 'node:path'

import { hostNodeFetch } from '../../tools/runtime/load-plugin'
import { createCdpExecutor, TEST_FUNCTION_ANSWER } from '../../tools/runtime/cdp-executor'
import { cdpFullFetch } from '../../tools/runtime/fetch'
import { RuntimeEvent, startVariant, StartOptions, VariantRuntime } from '../../tools/runtime/start-variant'
import { retryDelayMs, VARIANTS, VariantId } from '../../tools/runtime/variants'

const fixture = (name: string): string =>
    readFileSync(path.join(__dirname, '..', 'fixtures', `${name}.ts`), 'utf8')
const EVENT: RuntimeEvent = {
    uuid: 'e-1',
    event: 'signed_up',
    distinct_id: 'd-1',
    timestamp: '2026-01-01T00:00:00.000Z',
    properties: { email: 'ada@example.com', $set: { plan: 'pro' } },
    person: { id: 'p-1', properties: { email: 'ada@example.com' } },
}

const runtimes: VariantRuntime[] = []
async function start(
    id: VariantId,
    options: Partial<StartOptions> & { source: string }
): Promise<VariantRuntime> {
    const runtime = await startVariant(id, { config: {}, delayScale: 0.001, ...options })
    runtimes.push(runtime)
    return runtime
}
beforeAll(() => nock.disableNetConnect())
afterEach(async () => {
    for (const runtime of runtimes.splice(0)) await runtime.teardown()
    nock.cleanAll()
})
afterAll(() => nock.enableNetConnect())

const probe = async (runtime: VariantRuntime) => {
    const treatment = await runtime.onEvent(EVENT)
    expect([treatment.status, treatment.runs, treatment.error]).toEqual(['ok', 1, undefined])
    return JSON.parse(treatment.value as string)
}

describe('CDP legacy plugin executor (variants 5-6)', () => {
    test.each([5, 6] as const)(
        'variant %i: a module with timers; setup once with its own meta; the plain fetch',
        async (id) => {
            nock('https://api.intercom.io')
                .post('/probe', '{}')
                .matchHeader('content-type', 'application/json')
                .times(2)
                .reply(200, { type: 'probe' }, { 'X-RateLimit-Remaining': '7' })
            const runtime = await start(id, { source: fixture('runtime-probe') })
            await probe(runtime)
            const second = await probe(runtime)
            expect(second.globals).toMatchObject({
                setTimeout: 'function',
                process: 'object',
                AbortController: 'function',
            })
            expect(second.setups).toBe(1)
            expect(second.setupKeys).toEqual(['config', 'fetch', 'geoip', 'global', 'logger'])
            expect(second.eventKeys).toEqual([...VARIANTS[id].metaKeys].sort())
            // No `ok`, no `headers.get`: a lower-case header record.
            expect(second.answer).toEqual({
                status: 200,
                hasOk: false,
                headersGet: 'undefined',
                remaining: '7',
                body: { type: 'probe' },
            })
            expect(nock.isDone()).toBe(true)
        }
    )

    test('a test-function run answers every non-GET request itself; GET goes out', async () => {
        const post = await start(6, { source: fixture('runtime-probe'), testFunction: true })
        expect((await probe(post)).answer).toEqual({
            status: 200,
            hasOk: false,
            headersGet: 'undefined',
            body: { ...TEST_FUNCTION_ANSWER },
        })
        expect(post.logs.map((log) => log.message)).toContain('Fetch called but mocked due to test function')

        nock('https://api.intercom.io').get('/probe').reply(200, { type: 'real' })
        const get = await start(6, {
            source: fixture('runtime-probe'),
            testFunction: true,
            config: { method: 'GET' },
        })
        expect((await probe(get)).answer.body).toEqual({ type: 'real' })
    })

    test('a setupPlugin failure is kept: every event fails with it, as PostHog caches the rejected promise', async () => {
        const runtime = await start(5, { source: fixture('meta-shape'), config: { failSetup: 'yes' } })
        for (let i = 0; i < 2; i++) {
            expect(await runtime.onEvent(EVENT)).toMatchObject({
                status: 'failed',
                runs: 1,
                error: 'Error: Plugin plugin-posthog-intercom-plugin setup failed: Intercom API key missing: set it in the plugin config',
            })
        }
    })

    test('the newest executor re-runs a RetryError twice, 1-2 s then 2-3 s later (random 0.5: 1.5 s, 2.5 s)', async () => {
        const slept: number[] = []
        const executor = createCdpExecutor({
            source: fixture('throws-retry'),
            inputs: {},
            fetch: cdpFullFetch(hostNodeFetch),
            retry: VARIANTS[6].retry,
            person: true,
            random: () => 0.5,
            sleep: async (ms) => {
                slept.push(ms)
            },
        })
        const outcome = await executor.invoke({ event: EVENT, person: null })
        expect(outcome.runs.map((run) => (run.error as Error).name)).toEqual([
            'RetryError',
            'RetryError',
            'RetryError',
        ])
        expect(slept).toEqual([1500, 2500])
        expect(outcome.runs[2].logs.map((log) => log.message)).toEqual([
            'Plugin execution failed: Intercom is busy',
        ])
        executor.close()
    })
})

describe('RetryError policy by variant', () => {
    test('delays: variant 2 waits 5, 10, 20, 40 s; variant 6 1-2 s then 2-3 s; the others never retry', () => {
        expect([1, 2, 3, 4, 5].map((n) => retryDelayMs(VARIANTS[2].retry, n))).toEqual([
            5000, 10000, 20000, 40000, 0,
        ])
        expect([1, 2, 3].map((n) => retryDelayMs(VARIANTS[6].retry, n, () => 0))).toEqual([1000, 2000, 0])
        expect([1, 2].map((n) => retryDelayMs(VARIANTS[6].retry, n, () => 0.9999))).toEqual([1999, 2999])
        for (const id of [1, 3, 4, 5] as const) expect(VARIANTS[id].retry).toEqual({ kind: 'none' })
    })

    test.each([
        [1, 1],
        [2, 5],
        [3, 1],
        [4, 1],
        [5, 1],
        [6, 3],
    ] as const)(
        'variant %i gives an always-failing event %i run(s), then records the error',
        async (id, runs) => {
            const runtime = await start(id, { source: fixture('throws-retry') })
            expect(await runtime.onEvent(EVENT)).toEqual({
                status: 'failed',
                runs,
                retried: runs - 1,
                error: 'RetryError: Intercom is busy',
            })
        }
    )

    test.each([2, 6] as const)(
        'variant %i delivers an event that fails once, on the second run',
        async (id) => {
            const runtime = await start(id, { source: fixture('throws-retry'), config: { failures: '1' } })
            expect(await runtime.onEvent(EVENT)).toEqual({
                status: 'ok',
                runs: 2,
                retried: 1,
                value: { status: 'delivered' },
            })
        }
    )
})
