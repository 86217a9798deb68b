/** One file's replay: each row through onEvent, settled in the checkpoint once delivered, skipped or failed. */
// Rows go through the plugin concurrently. Transient failures are retried in place, as PostHog retried a
// RetryError; the plugin runs without a cache, so it keeps no retry queue of its own that could hide an event.
import { ProcessedPluginEvent, RetryError } from '@posthog/plugin-scaffold'
import { AsyncLocalStorage } from 'node:async_hooks'

import { findEmail, planWork, Settings } from '../../index'
import { sleep } from '../lib/sleep'
import { describeError, MAX_ATTEMPTS, retryDelayMs, toPluginEvent } from '../runtime/harness'
import { PluginExports, PluginMeta } from '../runtime/load-plugin'
import { checkpointPaths, FailedEvent, FileState, fingerprint, otherCheckpoints } from './checkpoint'
import { WindowGate } from './fetch'
import type { ReplayOptions } from './index'
import { detectInput, InputError, InputRecord, InputSource, openInput } from './input'
import { Slots } from '../lib/slots'
import { Pacer } from './pace'
import type { FileSummary, ReplayTargetKind } from './report'
import { countFailure, countSkip, createProgress, emptyFileSummary, failedByKind, outcomeOf } from './report'

/** The event as PostHog's current executor hands it to onEvent, person included; none without a timestamp. */
function eventOf({ row }: InputRecord): ProcessedPluginEvent | undefined {
    if (row?.timestamp === undefined) return undefined
    const person = row.person_properties && { uuid: row.person_id ?? '', properties: row.person_properties }
    const event = { ...row, timestamp: row.timestamp, person }
    return toPluginEvent(event, 'cdp', true) as unknown as ProcessedPluginEvent
}

/** True when the plugin may call Intercom for this event: only those are paced by --rate. */
function needsIntercom(event: ProcessedPluginEvent, settings: Settings): boolean {
    const work = planWork(event, settings)
    return work.deliver || work.syncPerson || work.syncCompany || work.companyKey !== null
}

/** The replay's options, checked, with their defaults (see ReplayOptions). */
interface RunSettings {
    /** The plugin's config as index.ts parses it: tells which rows may call Intercom. */
    settings: Settings
    concurrency: number
    /** Rows left to hand on in this replay, over every file (a trial run). */
    budget: { left: number }
    signal?: AbortSignal
    retryDelayScale: number
    stopAfterFailures: number
    checkpointEvery: number
    checkpointDir: string | false
}

/** The loaded plugin's hooks and the meta they share. */
export interface RunPlugin {
    onEvent: NonNullable<PluginExports['onEvent']>
    meta: PluginMeta
}

/** What every file of one replay shares. */
export interface Shared {
    options: ReplayOptions
    run: RunSettings
    plugin: RunPlugin
    target: {
        kind: ReplayTargetKind
        /** The checkpoint key of the target; null when a checkpoint would be meaningless (dry run, a throw-away emulator). */
        key: string | null
        /** Adds an emulator contact for an email of the file, when the emulator is seeded from the files. */
        seed?: (email: string) => void
    }
    /** Notices name the file as the user typed it. */
    notice: (file: string, line: string) => void
    /** The plugin config's digest, part of each checkpoint's key. */
    digest: string
    gate: WindowGate
    /** Events per second, when --rate caps them. */
    eventPacer?: Pacer
    /** Tells a dry-run write which row it came from, across the plugin's awaits. */
    rowContext: AsyncLocalStorage<number>
    redactText: (text: string) => string
}

/** How an event ended: settled (done, or failed with a reason), or left for the next run (interrupted). */
type Settlement = { failure?: FailedEvent } | 'unsettled'

const failure = ({ line, uuid }: InputRecord, kind: FailedEvent['kind'], reason: string): Settlement => ({
    failure: { line, uuid: uuid ?? '', kind, reason },
})

interface RunEnd {
    readToEnd: boolean
    stoppedBecause?: string
}

/** Reads and dispatches every record not done yet; resolves once every event in flight has settled and is saved. */
async function runFile(
    shared: Shared,
    state: FileState,
    file: FileSummary,
    input: InputSource
): Promise<RunEnd> {
    const { options, run, plugin, gate, target } = shared
    const showProgress = options.progress ?? (Boolean(process.stderr.isTTY) && target.kind !== 'dry-run')
    const progress = createProgress(showProgress, input.size, file)
    const working = new Set<Promise<void>>()
    const slots = new Slots(run.concurrency)
    let sinceSave = 0
    let failuresInARow = 0
    let lastFailure = ''

    const messageOf = (error: unknown): string =>
        shared.redactText(describeError(error).replace(/^(Error: |RetryError: )?(Intercom: )?/, ''))

    /** onEvent, with PostHog's plugin-server retries (5 attempts, 5/10/20/40 s apart) after a RetryError. */
    const sendEvent = async (event: ProcessedPluginEvent, record: InputRecord): Promise<Settlement> => {
        // index.ts reads the person from meta, PostHog's executor puts it on the event: both are given.
        const meta = { ...plugin.meta, person: event.person }
        for (let attempt = 1; ; attempt++) {
            try {
                const { status, reason } = outcomeOf(await plugin.onEvent({ ...event }, meta))
                // The replay gives the plugin no cache, so it has no queue: a queued event is not delivered.
                if (status === 'queued') return failure(record, 'failed', `queued by the plugin: ${reason}`)
                if (status === 'delivered' || status === 'synced') file[status]++
                else countSkip(file, status === 'skipped' ? reason : 'no outcome reported by the plugin')
                return {}
            } catch (error) {
                const message = messageOf(error)
                if (!(error instanceof RetryError)) return failure(record, 'refused', message)
                if (run.signal?.aborted) return 'unsettled'
                if (attempt >= MAX_ATTEMPTS) {
                    return failure(record, 'failed', `${message} (still failing after ${attempt} attempts)`)
                }
                // Never sooner than the rate-limit window allows: a retry into a spent window is wasted.
                const wait = Math.max(
                    retryDelayMs(attempt, run.retryDelayScale),
                    gate.pausedUntil() - Date.now()
                )
                await sleep(wait, run.signal)
                if (run.signal?.aborted) return 'unsettled' // the wait was cut short: redone by the next run
                file.retried++
            }
        }
    }

    const settle = (record: InputRecord, settlement: Settlement): void => {
        if (settlement !== 'unsettled') {
            const failed = settlement.failure
            state.settle(record.line, failed)
            if (failed) countFailure(file, failed)
            if (failed && failed.kind !== 'unreadable') {
                failuresInARow++
                lastFailure = failed.reason
            } else if (!failed) failuresInARow = 0
            if (++sinceSave >= run.checkpointEvery) {
                sinceSave = 0
                state.save(false)
            }
        }
        progress.update(input.bytesDone(), file)
    }

    /** Starts one event in the slot acquired for it. */
    const dispatch = async (record: InputRecord): Promise<void> => {
        const event = eventOf(record)
        if (event && shared.eventPacer && needsIntercom(event, run.settings)) await shared.eventPacer.take()
        run.budget.left--
        file.rowsRead++
        const work = (async (): Promise<Settlement> => {
            if (!record.row) return failure(record, 'unreadable', `unreadable row: ${record.error}`)
            if (!event) {
                // The plugin would use "now", which differs on every run: Intercom could not deduplicate a re-run.
                countSkip(file, 'no timestamp in the export')
                return {}
            }
            const seed = shared.target.seed
            const email = seed && findEmail(event, event.person, run.settings.emailProperty)
            if (email) seed?.(email)
            return shared.rowContext.run(record.line, () => sendEvent(event, record))
        })()
            // A fault of the replay itself: listed as failed, so the next run sends the event again.
            .catch((error: unknown) => failure(record, 'failed', `replay error: ${messageOf(error)}`))
            .then((settlement) => settle(record, settlement))
            .finally(() => {
                slots.release()
                working.delete(work)
            })
        working.add(work)
    }

    const stopReason = (): string | undefined => {
        if (run.signal?.aborted) return 'interrupted'
        if (failuresInARow >= run.stopAfterFailures) {
            return `${failuresInARow} events in a row not delivered, the last because ${lastFailure}`
        }
        return run.budget.left <= 0 ? '--limit reached' : undefined
    }

    let end: RunEnd = { readToEnd: true }
    let previous = 0
    try {
        for await (const record of input.records) {
            // Lines without a record (blank lines, a CSV header, inner lines of a quoted field) settle at once.
            for (let gap = previous + 1; gap < record.line; gap++) state.settle(gap)
            previous = Math.max(previous, record.line)
            if (state.isDone(record.line)) {
                file.doneEarlier++
                continue
            }
            // Checked once a slot is free: the events that just settled may have changed the answer.
            await slots.acquire()
            const stoppedBecause = stopReason()
            if (stoppedBecause) {
                slots.release()
                end = { readToEnd: false, stoppedBecause }
                break
            }
            await dispatch(record)
        }
    } catch (error) {
        // An unreadable file (truncated gzip, a broken stream): what was read still settles properly.
        const reason = shared.redactText(describeError(error).replace(/^Error: /, ''))
        end = { readToEnd: false, stoppedBecause: `unreadable after line ${previous}: ${reason}` }
    }
    try {
        await Promise.all(working)
    } finally {
        progress.stop() // a bar left drawn would garble the terminal after an error
    }
    const readToEnd = end.readToEnd && !run.signal?.aborted
    state.save(readToEnd)
    return { ...end, readToEnd }
}

/** The file's state for this target and config, with a notice when only other checkpoints of it exist. */
function openState(file: string, shared: Shared): FileState {
    const { run, target } = shared
    const key = { ...fingerprint(file), target: target.key ?? target.kind, config: shared.digest }
    const dir = target.key === null ? false : run.checkpointDir
    const paths = dir === false ? null : checkpointPaths(dir, key)
    const state = new FileState(key, paths, shared.options.restart)
    const others = dir !== false && !state.resumed ? otherCheckpoints(dir, key).length : 0
    if (others > 0) {
        shared.notice(
            file,
            `no checkpoint for this target and config, so every event is sent (${others} checkpoint(s) of another target, config or version of the file do not apply).`
        )
    }
    return state
}

/** One file, from its first event not done yet for this target and config. */
export async function replayFile(path: string, shared: Shared): Promise<FileSummary> {
    const { options, notice } = shared
    const file = emptyFileSummary(path)
    try {
        file.kind = detectInput(path, options.format)
    } catch (error) {
        if (!(error instanceof InputError)) throw error
        return { ...file, error: error.message, stoppedBecause: error.message }
    }
    if (file.kind.note) notice(path, `${file.kind.note}.`)
    const state = openState(path, shared)
    file.checkpoint = state.paths?.checkpoint
    file.failedFile = state.paths?.failed
    file.retriedFromEarlier = state.toRetry
    if (state.resumed && state.wasReadToEnd && state.toRetry === 0) {
        notice(path, 'every event was already delivered to this target with this config: nothing to do.')
        return { ...file, failed: failedByKind(state.failed()), readToEnd: true, complete: true }
    }
    if (state.resumed) {
        const retrying = state.toRetry > 0 ? `, retrying ${state.toRetry} earlier failure(s)` : ''
        notice(path, `resuming from ${state.paths?.checkpoint}${retrying}.`)
    }
    const input = openInput(path, file.kind)
    try {
        const end = await runFile(shared, state, file, input)
        return {
            ...file,
            ...end,
            failed: failedByKind(state.failed()),
            complete: state.complete(end.readToEnd),
        }
    } finally {
        input.close()
    }
}
