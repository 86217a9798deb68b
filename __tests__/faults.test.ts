/**
 * The fault campaign of tools/faults.ts, reduced to 60 events a run, inside `npm test`: every scenario in
 * every PostHog runtime, end to end through the harness and the Intercom emulator, with seeded faults.
 * Whatever the runtime allows to be delivered is stored exactly once; everything else is reported with a
 * reason; nothing is lost, duplicated, retried without bound, leaked or sent off Intercom; every run ends.
 */
import { runScenario, ScenarioResult } from '../tools/faults'
import { FaultScenario, Runtime, RUNTIMES, SCENARIOS } from '../tools/scenarios'

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
