/**
 * One file's replay: rows become the events PostHog would hand to onEvent, go through the plugin concurrently,
 * and each one settles in the checkpoint only once it is delivered, skipped with a reason, or failed with a
 * reason that the failed-events file keeps. Transient failures are retried in place, as PostHog retried a
 * RetryError; the plugin runs without a cache, so it keeps no retry queue of its own that could hide an event.
 */
import { ProcessedPluginEvent, Properties, RetryError } from '@posthog/plugin-scaffold'
import { AsyncLocalStorage } from 'node:async_hooks'

import { findEmail, planWork, Settings } from '../../index'
import { describeError, MAX_ATTEMPTS, retryDelayMs } from '../runtime/harness'
import { PluginExports, PluginMeta } from '../runtime/load-plugin'
import { FailedEvent, FileState } from './checkpoint'
import { WindowGate } from './fetch'
import { InputRecord, InputSource } from './input'
import { Pacer, sleep, Slots } from './pace'
import { outcomeOf, Progress, Tally } from './report'
import { ExportRow } from './rows'

// ---------------------------------------------------------------------------------------------------
// Rows to events
// ---------------------------------------------------------------------------------------------------

/**
 * The event as PostHog's current executor hands it to onEvent, person included (ProcessedPluginEvent.person).
 * The export's ClickHouse timestamp is already ISO 8601 UTC, as PostHog converts it.
 */
export function toPluginEvent(row: ExportRow & { timestamp: string }): ProcessedPluginEvent {
    const props = row.properties
    const objectProp = (value: unknown): Properties | undefined =>
        typeof value === 'object' && value !== null && !Array.isArray(value)
            ? (value as Properties)
            : undefined
    const teamId = row.team_id ?? 1
    return {
        distinct_id: row.distinct_id,
        ip: typeof props.$ip === 'string' ? props.$ip : null,
        team_id: teamId,
        event: row.event,
        properties: props,
        timestamp: row.timestamp,
        $set: objectProp(props.$set),
        $set_once: objectProp(props.$set_once),
        uuid: row.uuid,
        person: row.person_properties
            ? {
                  uuid: row.person_id ?? '',
                  team_id: teamId,
                  properties: row.person_properties,
                  created_at: '',
              }
            : undefined,
    }
}

function eventOf(record: InputRecord): ProcessedPluginEvent | undefined {
    const row = record.row
    return row?.timestamp === undefined ? undefined : toPluginEvent({ ...row, timestamp: row.timestamp })
}

/** True when the plugin may call Intercom for this event: only those are paced by --rate. */
function needsIntercom(event: ProcessedPluginEvent, settings: Settings): boolean {
    const work = planWork(event, settings)
    return work.deliver || work.syncPerson || work.syncCompany || work.companyKey !== null
}

// ---------------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------------

/** What the run needs of the replay's options. */
export interface RunSettings {
    /** The plugin's config, parsed by index.ts itself: tells which rows may call Intercom. */
    settings: Settings
    concurrency: number
    /** Rows left to hand on in this replay, over every file (a trial run). */
    budget: { left: number }
    signal?: AbortSignal
    /** Factor on PostHog's 5/10/20/40 s waits between onEvent attempts after a RetryError. */
    retryDelayScale: number
    /** Stop reading a file after this many events in a row were not delivered (Intercom down, key revoked). */
    stopAfterFailures: number
    checkpointEvery: number
}

/** The loaded plugin's hooks and the meta they share. */
export interface RunPlugin {
    onEvent: NonNullable<PluginExports['onEvent']>
    meta: PluginMeta
}

export interface RunParts {
    run: RunSettings
    plugin: RunPlugin
    /** Adds an emulator contact for an email of the file, when the emulator is seeded from the file. */
    seed?: (email: string) => void
    gate: WindowGate
    /** Events per second, when --rate caps them. */
    eventPacer?: Pacer
    rowContext: AsyncLocalStorage<number>
    state: FileState
    tally: Tally
    progress: Progress
    input: InputSource
    redactText: (text: string) => string
}

/** How an event ended: settled (done, or failed with a reason), or left for the next run (interrupted: the file is then not read to its end). */
type Settlement = { failure?: FailedEvent } | 'unsettled'

export interface RunEnd {
    readToEnd: boolean
    stoppedBecause?: string
}

export class FileRun {
    private readonly working = new Set<Promise<void>>()
    private readonly slots: Slots
    private sinceSave = 0
    private failuresInARow = 0
    private lastFailure = ''

    constructor(private readonly parts: RunParts) {
        this.slots = new Slots(parts.run.concurrency)
    }

    /** Reads and dispatches every record not done yet; resolves once every event in flight has settled. */
    async run(): Promise<RunEnd> {
        const end = await this.readAll()
        await Promise.all(this.working)
        const readToEnd = end.readToEnd && !this.parts.run.signal?.aborted
        this.parts.state.save(readToEnd)
        return { ...end, readToEnd }
    }

    private stopReason(): string | undefined {
        const { budget, signal, stopAfterFailures } = this.parts.run
        if (signal?.aborted) return 'interrupted'
        if (this.failuresInARow >= stopAfterFailures) {
            return `${this.failuresInARow} events in a row not delivered, the last because ${this.lastFailure}`
        }
        if (budget.left <= 0) return '--limit reached'
        return undefined
    }

    private async readAll(): Promise<RunEnd> {
        const { state, tally, input } = this.parts
        let previous = 0
        try {
            for await (const record of input.records) {
                // Lines without a record (blank lines, a CSV header, inner lines of a quoted field) settle at once.
                for (let gap = previous + 1; gap < record.line; gap++) state.settle(gap)
                previous = Math.max(previous, record.line)
                if (state.isDone(record.line)) {
                    tally.summary.doneEarlier++
                    continue
                }
                // Checked once a slot is free: the events that just settled may have changed the answer.
                await this.slots.acquire()
                const stoppedBecause = this.stopReason()
                if (stoppedBecause) {
                    this.slots.release()
                    return { readToEnd: false, stoppedBecause }
                }
                await this.dispatch(record)
            }
            return { readToEnd: true }
        } catch (error) {
            // An unreadable file (truncated gzip, a broken stream): what was read still settles properly.
            const reason = this.parts.redactText(describeError(error).replace(/^Error: /, ''))
            return { readToEnd: false, stoppedBecause: `unreadable after line ${previous}: ${reason}` }
        }
    }

    /** Starts one event in the slot acquired for it. */
    private async dispatch(record: InputRecord): Promise<void> {
        const { run, eventPacer } = this.parts
        const event = eventOf(record)
        if (event && eventPacer && needsIntercom(event, run.settings)) await eventPacer.take()
        run.budget.left--
        this.parts.tally.summary.rowsRead++
        const work = this.process(record, event)
            .catch((error: unknown): Settlement => ({
                // A fault of the replay itself: listed as failed, so the next run sends the event again.
                failure: {
                    line: record.line,
                    uuid: record.uuid ?? '',
                    kind: 'failed',
                    reason: `replay error: ${this.message(error)}`,
                },
            }))
            .then((settlement) => this.settle(record, settlement))
            .finally(() => {
                this.slots.release()
                this.working.delete(work)
            })
        this.working.add(work)
    }

    private async process(record: InputRecord, event: ProcessedPluginEvent | undefined): Promise<Settlement> {
        const uuid = record.uuid ?? ''
        if (!record.row) {
            return {
                failure: {
                    line: record.line,
                    uuid,
                    kind: 'unreadable',
                    reason: `unreadable row: ${record.error}`,
                },
            }
        }
        if (!event) {
            // The plugin would use "now", which differs on every run: Intercom could not deduplicate a re-run.
            this.parts.tally.skip('no timestamp in the export')
            return {}
        }
        this.seedContact(event)
        return this.parts.rowContext.run(record.line, () => this.sendEvent(event, record.line))
    }

    private seedContact(event: ProcessedPluginEvent): void {
        const seed = this.parts.seed
        const email = seed ? findEmail(event, event.person, this.parts.run.settings.emailProperty) : null
        if (seed && email) seed(email)
    }

    private message(error: unknown): string {
        return this.parts.redactText(
            describeError(error).replace(/^(Error: |RetryError: )?(Intercom: )?/, '')
        )
    }

    /** onEvent, with PostHog's plugin-server retries (5 attempts, 5/10/20/40 s apart) after a RetryError. */
    private async sendEvent(event: ProcessedPluginEvent, line: number): Promise<Settlement> {
        const { plugin, tally, run, gate } = this.parts
        const uuid = event.uuid ?? ''
        // index.ts reads the person from meta, PostHog's executor puts it on the event: both are given.
        const meta = { ...plugin.meta, person: event.person }
        for (let attempt = 1; ; attempt++) {
            try {
                const { status, reason } = outcomeOf(await plugin.onEvent({ ...event }, meta))
                if (status === 'delivered') tally.delivered()
                else if (status === 'synced') tally.synced()
                else if (status === 'skipped') tally.skip(reason)
                else if (status === 'queued') {
                    // The replay gives the plugin no cache, so it has no queue: a queued event is not delivered.
                    return {
                        failure: { line, uuid, kind: 'failed', reason: `queued by the plugin: ${reason}` },
                    }
                } else tally.skip('no outcome reported by the plugin')
                return {}
            } catch (error) {
                if (!(error instanceof RetryError)) {
                    return { failure: { line, uuid, kind: 'refused', reason: this.message(error) } }
                }
                if (run.signal?.aborted) return 'unsettled'
                if (attempt >= MAX_ATTEMPTS) {
                    const reason = `${this.message(error)} (still failing after ${attempt} attempts)`
                    return { failure: { line, uuid, kind: 'failed', reason } }
                }
                // Never sooner than the rate-limit window allows: a retry into a spent window is wasted.
                const wait = Math.max(
                    retryDelayMs(attempt, run.retryDelayScale),
                    gate.pausedUntil() - Date.now()
                )
                await sleep(wait, run.signal)
                if (run.signal?.aborted) return 'unsettled' // the wait was cut short: redone by the next run
                tally.summary.retried++
            }
        }
    }

    private settle(record: InputRecord, settlement: Settlement): void {
        const { state, tally, input, progress, run } = this.parts
        if (settlement !== 'unsettled') {
            const failure = settlement.failure
            state.settle(record.line, failure)
            if (failure) tally.fail(failure)
            if (failure && failure.kind !== 'unreadable') {
                this.failuresInARow++
                this.lastFailure = failure.reason
            } else if (!failure) this.failuresInARow = 0
            if (++this.sinceSave >= run.checkpointEvery) {
                this.sinceSave = 0
                state.save(false)
            }
        }
        progress.update(input.bytesDone(), tally.summary)
    }
}
