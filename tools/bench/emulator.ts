/** The bench's emulator, in a child process (so its CPU is measured apart) or in this one, and what it recorded. */
import { fork } from 'node:child_process'

import { Emulator, EmulatorOptions, SeedContact, startEmulator } from '../intercom/emulator'
import { findRoute } from '../intercom/rules'
import { addCount } from '../lib/report'
import { TOKEN } from './workload'

export const SEARCH_ROUTE = 'POST /contacts/search'

type EmulatorSnapshot = ReturnType<typeof takeSnapshot>

export interface EmulatorHandle {
    url: string
    /** What the emulator recorded; windows are counted from `since` (ms). */
    snapshot(since?: number): Promise<EmulatorSnapshot>
    close(): Promise<void>
}

/** Only plain data: the options cross to the child process as a message. */
export type EmulatorOverrides = Pick<EmulatorOptions, 'rateLimit'>

/** This process's CPU (user + system, µs) since `start`. */
export function cpuSince(start?: NodeJS.CpuUsage): number {
    const used = process.cpuUsage(start)
    return used.user + used.system
}

/** Counts per window of the emulator's fixed, clock-aligned rate-limit windows, empty windows included. */
function countPerWindow(times: number[], windowMs: number): number[] {
    const first = Math.floor(Math.min(...times) / windowMs)
    const counts: number[] = []
    for (const at of times) {
        const index = Math.floor(at / windowMs) - first
        while (counts.length <= index) counts.push(0)
        counts[index]++
    }
    return counts
}

/** What the emulator recorded, with calls per rate-limit window counted from `since`. */
function takeSnapshot(emulator: Emulator, cpuMicros: number | null, since: number) {
    const calls: Record<string, Record<string, number>> = {}
    const lastSearch = new Map<string, number>()
    const repeatGapsMs: number[] = []
    const requests = emulator.requests()
    for (const { method, path, status, body, at } of requests) {
        const route = findRoute(method, path)?.name ?? `${method} ${path}`
        addCount((calls[route] ??= {}), status === 0 ? 'dropped' : String(status))
        const value = (body as { query?: { value?: unknown } } | null)?.query?.value
        if (status !== 200 || route !== SEARCH_ROUTE || typeof value !== 'string') continue
        const email = value.toLowerCase()
        const previous = lastSearch.get(email)
        if (previous !== undefined) repeatGapsMs.push(at - previous)
        lastSearch.set(email, at)
    }
    const times = requests.filter((request) => request.at >= since).map((request) => request.at)
    return {
        stats: emulator.stats(),
        stored: emulator.events().length, // deduplicated like Intercom
        calls, // by route, then by the status answered
        searchedEmails: lastSearch.size, // distinct emails among the searches answered 200
        repeatGapsMs, // for each repeated search of an email: ms since the previous one
        callsPerWindow: countPerWindow(times, emulator.options.windowSeconds * 1000),
        cpuMicros, // of the emulator's process; null when it shares the host process
    }
}

/** A fresh emulator for one scenario, holding the workload's contacts. */
export async function startBenchEmulator(
    where: 'child' | 'in-process',
    contacts: SeedContact[],
    events: number,
    overrides: EmulatorOverrides = {}
): Promise<EmulatorHandle> {
    // Every request must stay countable: the default record limit could be outgrown by a large run.
    const options = { tokens: [TOKEN], contacts, recordLimit: Math.max(100_000, events * 5), ...overrides }
    if (where === 'child') return childEmulator(options)
    const emulator = await startEmulator(options)
    return {
        url: emulator.url,
        snapshot: async (since = 0) => takeSnapshot(emulator, null, since),
        close: () => emulator.close(),
    }
}

/**
 * The emulator in a child process running this file. The parent asks one thing at a time: the first message
 * starts the emulator (answered with its URL), each later one asks for a snapshot; disconnecting closes it.
 */
async function childEmulator(options: EmulatorOptions): Promise<EmulatorHandle> {
    // tsx passes its loader in execArgv, which fork() hands on: the child runs this same TypeScript file.
    const child = fork(__filename, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
    const ask = <T>(message: object): Promise<T> =>
        new Promise<T>((resolve, reject) => {
            child.once('message', (reply) => resolve(reply as T))
            void exited.then((code) => reject(new Error(`emulator child exited (${code})`)))
            child.send(message)
        })
    try {
        const url = await ask<string>({ options })
        return {
            url,
            snapshot: (since = 0) => ask<EmulatorSnapshot>({ since }),
            close: async () => {
                child.disconnect()
                await exited
            },
        }
    } catch (error) {
        child.kill()
        throw error
    }
}

function serveEmulatorInChild(): void {
    let emulator: Promise<Emulator> | undefined
    process.on('message', async (message: { options?: EmulatorOptions; since?: number }) => {
        if (message.options) {
            emulator = startEmulator(message.options)
            process.send?.((await emulator).url)
        } else if (emulator) {
            process.send?.(takeSnapshot(await emulator, cpuSince(), message.since ?? 0))
        }
    })
    // Parent gone (finished, crashed or killed): nothing must outlive it.
    process.on('disconnect', () => {
        void Promise.resolve(emulator?.then((running) => running.close())).finally(() => process.exit(0))
    })
}

if (require.main === module && process.send) serveEmulatorInChild()
