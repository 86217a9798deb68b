/** Leak and reach audit of the plugin: what it logs, caches and calls.
 *
 * No log line, outcome reason or thrown message of the plugin holds the API key, an
 * email or a property value (canaries make them findable), the cache holds neither key nor email in clear,
 * and requests only ever go to Intercom's three hosts over https, whatever the config says.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import * as path from 'node:path'

import { DEFAULT_PLUGIN_FILE, INTERCOM_HOSTS } from '../tools/runtime/load-plugin'
import {
    BadInputReport,
    findLeaks,
    runBadConfig,
    runBadInputs,
    runScenario,
    startSandboxPlugin,
} from '../tools/faults/faults'
import {
    BAD_CONFIG_CASES,
    CANARY_TOKEN,
    CORPUS_CONFIG,
    corpusEvent,
    EMAIL_MARK,
    GOOD_EMAIL,
    RUNTIMES,
    SANDBOX_RUNTIMES,
    SCENARIOS,
    VALUE_MARK,
} from '../tools/faults/scenarios'

describe('the auditor', () => {
    test.each([
        ['the token', `Authorization: Bearer ${CANARY_TOKEN}`, 'token'],
        ['an email', `Skipped event x: ${GOOD_EMAIL}`, 'email'],
        ['any email-shaped text', 'Skipped event x: someone@elsewhere.org', 'email-shaped text'],
        ['a property value', `metadata plan=${VALUE_MARK}-plan`, 'property value'],
    ])('finds %s', (_what, text, label) => {
        expect(findLeaks([text])).toEqual([expect.stringContaining(label)])
    })

    test('passes what the plugin is allowed to log', () => {
        const allowed = [
            'Skipped event 018f0000-0000-7000-8000-00000000bad0: no valid email.',
            'Queued event 018f0000-0000-7000-8000-000000000001 for retry: Intercom answered 503 to POST /events: unavailable',
            'Intercom rejected the API key (401): check "Intercom API key" in the plugin settings.',
        ]
        expect(findLeaks(allowed)).toEqual([])
    })
})

describe('bad-input corpus: logs, reasons, errors and cache', () => {
    let report: BadInputReport
    beforeAll(async () => {
        report = await runBadInputs({ seed: 7, generated: 100 })
    }, 60_000)

    test('no log line, reason or error message holds the token, an email or a value', () => {
        expect(report.leaks).toEqual([])
    })

    test('the cache holds neither the token nor an email', () => {
        expect(report.cacheLeaks).toEqual([])
    })

    test('no request went anywhere but Intercom', () => {
        expect(report.offHostRequests).toBe(0)
    })
})

describe('the retry queue in the cache', () => {
    test.each(['US', 'EU'])('seals the email and keeps the token out (%s)', async (region) => {
        const instance = await startSandboxPlugin(
            'plugin-server',
            { ...CORPUS_CONFIG, region },
            { eventStatus: 503 }
        )
        const outcome = await instance.plugin.onEvent?.(corpusEvent(), instance.meta)
        expect(outcome).toMatchObject({ status: 'queued' })
        const queued = instance.storeWrites.filter((text) => text.includes('sealedEmail'))
        expect(queued).toHaveLength(1)
        expect(findLeaks(instance.storeWrites, ['token', 'email'])).toEqual([])
        expect(findLeaks(instance.logs)).toEqual([])
    })
})

describe("reach: only https to Intercom's hosts, whatever the config says", () => {
    test.each(SANDBOX_RUNTIMES)('every config of the corpus (%s)', async (runtime) => {
        const contacted = new Set<string>()
        for (const c of BAD_CONFIG_CASES) {
            const result = await runBadConfig(runtime, c)
            result.hosts.forEach((host) => contacted.add(host))
            expect([c.name, result.offHost]).toEqual([c.name, []])
            expect([c.name, findLeaks(result.texts)]).toEqual([c.name, []])
        }
        expect([...contacted].every((host) => (INTERCOM_HOSTS as readonly string[]).includes(host))).toBe(
            true
        )
    })

    test('a token rejected by Intercom is not repeated in the setup error', async () => {
        const instance = await startSandboxPlugin('cdp', CORPUS_CONFIG, { rejectToken: true })
        expect(instance.setupError).toMatch(/rejected the API key \(401\)/)
        expect(instance.setupError).not.toContain(CANARY_TOKEN)
        expect(instance.setupError).not.toContain(EMAIL_MARK)
    })
})

describe('fault campaign logs', () => {
    test.each(RUNTIMES.map((runtime) => [runtime.name, runtime] as const))(
        'a run full of failures logs plenty, and nothing secret (%s)',
        async (_name, runtime) => {
            const scenario = SCENARIOS.find((s) => s.name === 'token-revoked')!
            const result = await runScenario(scenario, runtime, { events: 40, seed: 3 })
            expect(result.logLines).toBeGreaterThan(10)
            expect(result.leaks).toEqual([])
            expect(result.offHost).toEqual([])
        },
        60_000
    )
})

describe('the audit is not blind: deliberately broken copies of index.ts are caught', () => {
    const source = readFileSync(DEFAULT_PLUGIN_FILE, 'utf8')
    const dir = mkdtempSync(path.join(tmpdir(), 'intercom-mutant-'))
    afterAll(() => rmSync(dir, { recursive: true, force: true }))

    /** index.ts with one line changed; fails loudly if the line is no longer there. */
    function mutant(name: string, find: string, replace: string): string {
        expect(source).toContain(find)
        const file = path.join(dir, `${name}.ts`)
        writeFileSync(file, source.replace(find, replace))
        return file
    }

    const scenario = SCENARIOS.find((s) => s.name === 'shared-cache')!
    const runtime = RUNTIMES[0]

    test('a plugin that logs event properties is reported as leaking emails and values', async () => {
        const onEvent =
            'export async function onEvent(event: ProcessedPluginEvent, meta: PluginMeta): Promise<Outcome> {'
        const pluginFile = mutant(
            'logs-properties',
            onEvent,
            `${onEvent}\n    console.log(JSON.stringify(event.properties))`
        )
        const result = await runScenario(scenario, runtime, { events: 12, pluginFile })
        expect(result.leaks.join('\n')).toMatch(/email, property value/)
    }, 60_000)

    test('a plugin that calls another host is reported as reaching off Intercom', async () => {
        const usHost = "US: 'https://api.intercom.io',"
        const pluginFile = mutant('calls-elsewhere', usHost, "US: 'https://api.intercom.io.evil.example',")
        const result = await runScenario(scenario, runtime, { events: 12, pluginFile })
        expect(result.offHost).toContain('https://api.intercom.io.evil.example')
        expect(result.lost).toBe(0) // refused requests fail the events, which are then reported
    }, 60_000)

    test('a plugin that says "queued" but queues nothing is caught losing events', async () => {
        const enqueue = 'ctx.cache ? await park(ctx.cache, JSON.stringify(item), true) : null'
        const pluginFile = mutant('forgets-queue', enqueue, "ctx.cache ? 'parked' : null")
        const burst = SCENARIOS.find((s) => s.name === '5xx-burst')!
        const result = await runScenario(burst, runtime, { events: 30, pluginFile })
        expect(result.lost).toBeGreaterThan(0)
    }, 60_000)

    test('a plugin whose retries change created_at is caught storing events twice', async () => {
        const retry = 'const outcome = await deliver(ctx, identity, item.draft)'
        const shifted =
            'const outcome = await deliver(ctx, identity, { ...item.draft, created_at: item.draft.created_at + 1 })'
        const pluginFile = mutant('shifts-retries', retry, shifted)
        const slow = SCENARIOS.find((s) => s.name === 'slow-timeouts')!
        const result = await runScenario(slow, runtime, { events: 60, pluginFile })
        expect(result.unexpectedStored).toBeGreaterThan(0)
    }, 60_000)
})
