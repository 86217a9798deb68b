/** The fault campaign (tools/faults/faults.ts), reduced to 60 events a run, inside `npm test`.
 *
 * Every scenario in
 * every PostHog runtime, end to end through the harness and the Intercom emulator, with seeded faults.
 * Whatever the runtime allows to be delivered is stored exactly once; everything else is reported with a
 * reason; nothing is lost, duplicated, retried without bound, leaked or sent off Intercom; every run ends.
 * Then a few cells of the variant matrix (PostHog's six real runtimes, a real Redis) and the command line.
 */
import { spawnSync } from 'node:child_process'

import { parseFaultsArgs, runScenario, ScenarioResult } from '../tools/faults/faults'
import { formatVariantMatrix, runVariantScenario, VariantScenarioResult } from '../tools/runtime/campaign'
import { VariantId } from '../tools/runtime/variants'
import {
    FaultScenario,
    Runtime,
    RUNTIMES,
    SCENARIOS,
    VARIANT_SCENARIOS,
    VariantScenarioName,
} from '../tools/faults/scenarios'

/** Small enough for ~20 s on 2 cores, large enough that every fault hits several events. */
const EVENTS = 60
const SEED = 1

/** What must hold after any run, whatever the scenario and runtime. */
function invariants(result: ScenarioResult) {
    return {
        lost: result.lost,
        lostUuids: result.lostUuids,
        duplicatesStored: result.duplicatesStored,
        unexpectedStored: result.unexpectedStored,
        misdirected: result.misdirected,
        duplicateContacts: result.duplicateContacts,
        skipMismatches: result.skipMismatches,
        unreasoned: result.unreasoned,
        retriedAfterPermanent: result.retriedAfterPermanent,
        invalidRequests: result.invalidRequests,
        drained: result.drained,
        queuedNotDrained: result.queuedNotDrained,
        leaks: result.leaks,
        offHost: result.offHost,
    }
}

const SOUND: ReturnType<typeof invariants> = {
    lost: 0,
    lostUuids: [],
    duplicatesStored: 0,
    unexpectedStored: 0,
    misdirected: 0,
    duplicateContacts: 0,
    skipMismatches: [],
    unreasoned: [],
    retriedAfterPermanent: 0,
    invalidRequests: 0,
    drained: true,
    queuedNotDrained: 0,
    leaks: [],
    offHost: [],
}

/** The retry queue (plugin server) delivers everything a transient fault delayed; cdp cannot retry. */
function mustDeliverAll(scenario: FaultScenario, runtime: Runtime): boolean {
    return runtime.mode === 'plugin-server' && !scenario.permanent
}

/** Contact lookups: shared through the cache on the plugin server, once per worker without it (cdp). */
function searchBound(scenario: FaultScenario, runtime: Runtime, emails: number): number {
    const perEmail = scenario.searchesPerEmail ?? Infinity
    return Math.ceil(emails * perEmail * (runtime.mode === 'cdp' ? scenario.workers : 1))
}

describe.each(SCENARIOS.map((scenario) => [scenario.name, scenario] as const))('%s', (_name, scenario) => {
    test.each(RUNTIMES.map((runtime) => [runtime.name, runtime] as const))(
        'in the %s runtime',
        async (_runtime, runtime) => {
            const result = await runScenario(scenario, runtime, { events: EVENTS, seed: SEED })

            expect(invariants(result)).toEqual(SOUND)
            // Every valid event is stored once or reported: the ledger balances.
            expect(result.deliveredOnce + result.reported).toBe(result.valid)
            expect(result.maxPostsPerEvent).toBeLessThanOrEqual(result.maxPostsAllowed)
            if (scenario.fault !== 'none') expect(result.faultCounts[scenario.fault]).toBeGreaterThan(0)
            if (mustDeliverAll(scenario, runtime)) expect(result.deliveredOnce).toBe(result.valid)
            expect(result.searches).toBeLessThanOrEqual(searchBound(scenario, runtime, result.emails))
            // After a 429 every worker waits: only requests already in flight reach Intercom.
            expect(result.callsAfter429).toBeLessThanOrEqual(result.callsAfter429Allowed)
        },
        60_000
    )
})

describe('what the scenarios show', () => {
    const run = (name: string, runtime: Runtime['name']) =>
        runScenario(
            SCENARIOS.find((s) => s.name === name)!,
            RUNTIMES.find((r) => r.name === runtime)!,
            { events: EVENTS, seed: SEED }
        )

    test('a POST that timed out after Intercom stored it is retried and deduplicated, not stored twice', async () => {
        const result = await run('slow-timeouts', 'plugin-server')
        expect(result.faultCounts.timeout).toBeGreaterThan(0)
        expect(result.dedupedReceipts).toBeGreaterThan(0)
        expect(result.duplicatesStored).toBe(0)
    }, 60_000)

    test("permanent refusals are reported with Intercom's reason and tried once", async () => {
        const result = await run('event-name-limit', 'plugin-server-2024')
        expect(Object.keys(result.reasons)).toEqual([
            expect.stringMatching(/Intercom refused event .* Cannot have more than N active event names/),
        ])
        expect(result.maxPostsPerEvent).toBe(1)
    }, 60_000)
})

describe("the variant matrix: PostHog's real runtimes with a real Redis (reduced)", () => {
    /** One cell per scenario is enough here: __tests__/runtime/queue-contract.test.ts covers the rest at full size. */
    const CELLS: ReadonlyArray<[VariantScenarioName, VariantId]> = [
        ['backlog-1000', 4],
        ['kill-9-mid-drain', 4],
        ['redis-restart', 3],
        ['burst-10000-rate-limit', 6],
    ]

    test.each(CELLS)(
        '%s in variant %i: nothing lost, nothing unexpected stored',
        async (name, variant) => {
            const scenario = VARIANT_SCENARIOS.find((s) => s.name === name)!
            const result = await runVariantScenario(scenario, variant, { small: true })
            expect(result.sent).toBeGreaterThanOrEqual(scenario.smallEvents)
            expect({
                lost: result.lost,
                unexpected: result.unexpected,
                failedRateLimit: result.failedRateLimit,
            }).toEqual({
                lost: 0,
                unexpected: 0,
                failedRateLimit: 0,
            })
            if (scenario.smallRateLimit) expect(result.rateLimited).toBeGreaterThan(0)
        },
        90_000
    )

    test('the matrix prints scenarios as rows and the six variants as columns', () => {
        const result = { scenario: 'backlog-1000', sent: 10, missing: 3, lost: 1, failedRateLimit: 0 }
        const table = formatVariantMatrix([{ ...result, variant: 2 } as VariantScenarioResult])
        const [header, , row] = table.split('\n')
        expect(header.split(/ {2,}/)).toEqual(['scenario', ...[1, 2, 3, 4, 5, 6].map((v) => `variant ${v}`)])
        expect(row.split(/ {2,}/)).toEqual([
            'backlog-1000',
            '-',
            '1 lost, 2 reported / 10',
            '-',
            '-',
            '-',
            '-',
        ])
    })
})

describe('npm run faults: the command line', () => {
    const run = (...args: string[]) =>
        spawnSync(process.execPath, ['--import', 'tsx', 'tools/faults/faults.ts', ...args], {
            encoding: 'utf8',
        })

    test('--help prints the usage, with every scenario, and exits 0', () => {
        const result = run('--help')
        expect(result.status).toBe(0)
        expect(result.stdout).toContain('Usage: npm run faults -- [options]')
        for (const scenario of [...SCENARIOS, ...VARIANT_SCENARIOS])
            expect(result.stdout).toContain(scenario.name)
    })

    test.each([
        [['--scenario', 'nope'], "Unknown scenario 'nope'"],
        [['--frobnicate'], "Unknown option '--frobnicate'"],
        [['--variants', '0,7'], '--variants takes numbers 1 to 6'],
        [['--events'], '--events needs a value'],
        [['--events', 'many'], "--events needs a whole number, not 'many'"],
    ])('%j is refused with a clear message', (args, message) => {
        expect(() => parseFaultsArgs(args)).toThrow(message)
    })

    test('an unknown scenario or option exits non-zero, naming it', () => {
        for (const [args, message] of [
            [['--scenario', 'nope'], "Unknown scenario 'nope'. Known: 5xx-burst"],
            [['--frobnicate'], "Unknown option '--frobnicate'"],
        ] as const) {
            const result = run(...args)
            expect(result.status).toBe(2)
            expect(result.stderr).toContain(message)
            expect(result.stderr).toContain('Usage: npm run faults')
        }
    })
})
