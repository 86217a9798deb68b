/**
 * The replay's run: rows become the events PostHog would hand to onEvent, go through the plugin paced and
 * bounded, and the checkpoint only ever moves past rows that are finished. The plugin's retry queue is
 * drained with runEveryMinute meanwhile and at the end.
 */
import { ProcessedPluginEvent, Properties, RetryError } from '@posthog/plugin-scaffold'
import { AsyncLocalStorage } from 'node:async_hooks'

import { findEmail, planWork, Settings } from '../index'
import { describeError, MAX_ATTEMPTS, retryDelayMs } from './harness'
import { PluginExports, PluginMeta } from './load-plugin'
import { Checkpoint, CheckpointCounts, FileFingerprint, writeCheckpoint } from './replay-checkpoint'
import { CallMeter } from './replay-fetch'
import { ExportRow, InputRecord, InputSource, Position } from './replay-input'
import { Pacer, sleep, Slots } from './replay-pace'
import { drainReportOf, Progress, sumCounts, Tally } from './replay-report'

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

/** The event of a readable row with a timestamp; undefined otherwise. */
function eventOf(record: InputRecord): ProcessedPluginEvent | undefined {
    const row = record.row
    return row?.timestamp === undefined ? undefined : toPluginEvent({ ...row, timestamp: row.timestamp })
}

/** True when the plugin may call Intercom for this event: only those are paced. */
function needsIntercom(event: ProcessedPluginEvent, settings: Settings): boolean {
    const work = planWork(event, settings)
    return work.deliver || work.syncPerson || work.syncCompany || work.companyKey !== null
}

// ---------------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------------

/** How a row ended for the checkpoint: finished, waiting in the plugin's retry queue, or to be redone. */
type Completion = 'finished' | 'queued' | 'unfinished'

/** What the run needs of the replay's options. */
export interface RunSettings {
    /** The plugin's config, parsed by index.ts itself: used to tell which rows may call Intercom. */
    settings: Settings
    concurrency: number
    limit?: number
    signal?: AbortSignal
    /** Factor on PostHog's 5/10/20/40 s waits between onEvent attempts after a RetryError. */
    retryDelayScale: number
    drainIntervalMs: number
    drainRounds: number
}

/** The loaded plugin's hooks and the meta they share (PostHog's plugin-server meta, cache included). */
export interface RunPlugin {
    onEvent: NonNullable<PluginExports['onEvent']>
    runEveryMinute?: PluginExports['runEveryMinute']
    meta: PluginMeta
}

export interface RunParts {
    run: RunSettings
    plugin: RunPlugin
    /** Adds an emulator contact for an email of the file, when the emulator is seeded from the file. */
    seed?: (email: string) => void
    meter: CallMeter
    eventPacer: Pacer
    rowContext: AsyncLocalStorage<number>
    tally: Tally
    checkpoint: CheckpointWriter | null
    progress: Progress
    input: InputSource
    redactText: (text: string) => string
}

/** Writes the checkpoint: every `every` finished rows, and at the end. */
export class CheckpointWriter {
    private sinceWrite = 0

    constructor(
        private readonly path: string,
        private readonly file: FileFingerprint,
        private readonly earlier: CheckpointCounts,
        private readonly every: number
    ) {}

    rowFinished(position: () => Position, counts: () => CheckpointCounts): void {
        if (++this.sinceWrite < this.every) return
        this.write(position(), counts(), false)
    }

    write(position: Position, counts: CheckpointCounts, complete: boolean): void {
        this.sinceWrite = 0
        const checkpoint: Checkpoint = {
            version: 1,
            ...this.file,
            line: position.line,
            offset: position.offset,
            complete,
            counts: sumCounts(this.earlier, counts),
            updatedAt: new Date().toISOString(),
        }
        writeCheckpoint(this.path, checkpoint)
    }
}

export class ReplayRun {
    /** Rows being processed, by the line they end on → the position just before them. */
    private readonly inFlight = new Map<number, Position>()
    /** Rows the plugin queued, by the sequence number of their outcome: done once a drain empties the queue. */
    private readonly queuedRows = new Map<number, Position>()
    /** Rows that failed transiently or were abandoned by an interruption: the checkpoint stays before them. */
    private readonly unfinished: Position[] = []
    private readonly working = new Set<Promise<void>>()
    private readonly slots: Slots
    private lastDispatched: Position
    private queuedSequence = 0
    private draining?: Promise<void>
    private drainTimer?: NodeJS.Timeout

    constructor(
        private readonly parts: RunParts,
        start: Position
    ) {
        this.slots = new Slots(parts.run.concurrency)
        this.lastDispatched = start
    }

    private get signal(): AbortSignal | undefined {
        return this.parts.run.signal
    }

    /** Reads and dispatches rows; resolves once every one is done and the retry queue drained (bounded). */
    async run(): Promise<{ endOfFile: boolean }> {
        const { drainIntervalMs } = this.parts.run
        this.drainTimer = setInterval(() => this.drainInBackground(), drainIntervalMs)
        let endOfFile: boolean
        try {
            endOfFile = await this.readAll()
            await Promise.all(this.working)
        } finally {
            clearInterval(this.drainTimer)
        }
        await this.drainAtEnd()
        return { endOfFile }
    }

    private limitReached(): boolean {
        const limit = this.parts.run.limit
        return limit !== undefined && this.parts.tally.rows >= limit
    }

    private async readAll(): Promise<boolean> {
        try {
            for await (const record of this.parts.input.records) {
                if (this.limitReached() || this.signal?.aborted) return false
                const event = eventOf(record)
                await this.slots.acquire()
                if (event && needsIntercom(event, this.parts.run.settings)) await this.parts.eventPacer.take()
                if (this.signal?.aborted) {
                    this.slots.release()
                    return false
                }
                this.dispatch(record, event)
            }
            return true
        } catch (error) {
            // An unreadable file (truncated gzip, broken CSV quoting): what was read is still finished properly.
            this.parts.tally.fail(`input file: ${this.parts.redactText(describeError(error))}`)
            return false
        }
    }

    private dispatch(record: InputRecord, event: ProcessedPluginEvent | undefined): void {
        this.parts.tally.rows++
        this.inFlight.set(record.after.line, record.before)
        this.lastDispatched = record.after
        const work = this.process(record, event)
            .catch((error: unknown): Completion => {
                // A fault of the replay itself: counted, and the row is redone on resume.
                this.parts.tally.fail(`replay error: ${this.parts.redactText(describeError(error))}`)
                return 'unfinished'
            })
            .then((completion) => this.complete(record, completion))
            .finally(() => {
                this.slots.release()
                this.working.delete(work)
            })
        this.working.add(work)
    }

    private async process(record: InputRecord, event: ProcessedPluginEvent | undefined): Promise<Completion> {
        const { tally } = this.parts
        if (!record.row) {
            tally.fail(`unreadable row: ${record.error}`)
            return 'finished'
        }
        if (!event) {
            // The plugin would use "now", which differs on every run: Intercom could not deduplicate a re-run.
            tally.skip('no timestamp in the export')
            return 'finished'
        }
        this.seedContact(event)
        return this.parts.rowContext.run(record.after.line, () => this.sendEvent(event))
    }

    private seedContact(event: ProcessedPluginEvent): void {
        const seed = this.parts.seed
        const email = seed ? findEmail(event, event.person, this.parts.run.settings.emailProperty) : null
        if (seed && email) seed(email)
    }

    /** onEvent, with PostHog's plugin-server retries (5 attempts, 5/10/20/40 s apart) after a RetryError. */
    private async sendEvent(event: ProcessedPluginEvent): Promise<Completion> {
        const { plugin, tally, run } = this.parts
        // index.ts reads the person from meta, PostHog's executor puts it on the event: both are given.
        const meta = { ...plugin.meta, person: event.person }
        for (let attempt = 1; ; attempt++) {
            try {
                const status = tally.outcome(await plugin.onEvent({ ...event }, meta))
                return status === 'queued' ? 'queued' : 'finished'
            } catch (error) {
                if (!(error instanceof RetryError)) {
                    tally.fail(this.parts.redactText(describeError(error).replace(/^Error: /, '')))
                    return 'finished'
                }
                if (this.signal?.aborted) return 'unfinished'
                if (attempt >= MAX_ATTEMPTS) {
                    tally.fail(
                        `${this.parts.redactText(error.message)} (still failing after ${attempt} attempts)`
                    )
                    return 'unfinished'
                }
                await sleep(retryDelayMs(attempt, run.retryDelayScale), this.signal)
                if (this.signal?.aborted) return 'unfinished' // the wait was cut short: redone on resume
                tally.retried++
            }
        }
    }

    private complete(record: InputRecord, completion: Completion): void {
        this.inFlight.delete(record.after.line)
        if (completion === 'queued') this.queuedRows.set(++this.queuedSequence, record.before)
        if (completion === 'unfinished') this.unfinished.push(record.before)
        const { tally, input, checkpoint, meter, progress } = this.parts
        progress.update(input.bytesDone(), tally)
        checkpoint?.rowFinished(
            () => this.position(),
            () => tally.counts(meter.snapshot().total)
        )
    }

    /** Everything before this point is finished: the earliest row still in flight, queued, or to be redone. */
    position(): Position {
        const pending = [...this.inFlight.values(), ...this.queuedRows.values(), ...this.unfinished]
        if (pending.length === 0) return this.lastDispatched
        return pending.reduce((earliest, position) => (position.line < earliest.line ? position : earliest))
    }

    get allFinished(): boolean {
        return this.inFlight.size === 0 && this.queuedRows.size === 0 && this.unfinished.length === 0
    }

    // --- the plugin's retry queue --------------------------------------------------------------------

    private drainInBackground(): void {
        if (!this.draining && this.queuedRows.size > 0) {
            this.draining = this.drainOnce()
                .then(() => undefined)
                .finally(() => {
                    this.draining = undefined
                })
        }
    }

    /** One runEveryMinute; an empty queue finishes every row queued before it started. */
    private async drainOnce(): Promise<number> {
        const { plugin, tally } = this.parts
        const queuedBefore = this.queuedSequence
        let remaining: number
        try {
            const report = drainReportOf(await plugin.runEveryMinute?.(plugin.meta))
            tally.drained(report)
            remaining = report.remaining
        } catch (error) {
            tally.fail(`runEveryMinute: ${this.parts.redactText(describeError(error))}`)
            return this.queuedRows.size
        }
        if (remaining === 0) {
            for (const sequence of [...this.queuedRows.keys()]) {
                if (sequence <= queuedBefore) this.queuedRows.delete(sequence)
            }
        }
        return remaining
    }

    /** Drains until the queue is empty, for at most `drainRounds` rounds; what is left is reported as failed. */
    private async drainAtEnd(): Promise<void> {
        await this.draining
        const { drainRounds, drainIntervalMs } = this.parts.run
        let remaining = this.queuedRows.size
        for (let round = 0; remaining > 0 && round < drainRounds && !this.signal?.aborted; round++) {
            if (round > 0) await sleep(drainIntervalMs, this.signal)
            remaining = await this.drainOnce()
        }
        if (remaining > 0) {
            this.parts.tally.queue.left = remaining
            this.parts.tally.fail(
                'still in the retry queue when the replay ended (sent again on resume)',
                remaining
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Plugin log lines: the retry queue's drops are only told there
// ---------------------------------------------------------------------------------------------------

const DROPPED = /^Dropped queued event \S+: (.*?)\.?$/
const QUEUE_FULL = /^Retry queue is full or unavailable: dropped (\d+) events/

/** runEveryMinute reports drops as counts; their reasons are in its log lines (see retryQueued in index.ts). */
export function countQueueDrop(tally: Tally, level: string, text: string): void {
    const dropped = DROPPED.exec(text)
    if (dropped) {
        // Info level: the event was skipped on retry (e.g. no Intercom contact); error level: it failed.
        if (level === 'error') tally.fail(`dropped from the retry queue: ${dropped[1]}`)
        else tally.skip(dropped[1])
        return
    }
    const full = QUEUE_FULL.exec(text)
    if (full) tally.fail('dropped: retry queue full or unavailable', Number(full[1]))
}
