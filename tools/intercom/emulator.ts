/** The Intercom model (model.ts) served over HTTP on loopback.
 * For end-to-end tests, the demo run, the benchmark and the fault campaign: a thin server that reads each
 * request, lets the model answer it, and writes the answer.
 */
import { once } from 'node:events'
import { createServer, IncomingMessage, ServerResponse } from 'node:http'
import { AddressInfo } from 'node:net'

import { EmulatorOptions, Intercom } from './model'

export { REGIONS } from './model'
export type { EmulatorOptions, EmulatorStats, RecordedRequest, Region, ResolvedOptions } from './model'
export type { DataAttribute, SeedContact, StoredCompany, StoredContact, StoredEvent } from './workspace'
export type { LongStringPolicy } from './rules'

/** The model's controls (configure, addContact, contacts(), events(), requests(), stats()…) plus the server. */
export interface Emulator extends Omit<Intercom, 'fetch' | 'workspace'> {
    url: string
    port: number
    close(): Promise<void>
}

class EmulatorServer extends Intercom implements Emulator {
    url = ''
    port = 0
    private readonly server = createServer()
    private closed = false

    async listen(): Promise<void> {
        this.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
            this.serve(req, res).catch((error: unknown) => {
                // A bug in the emulator must still answer, or the caller would hang until its timeout.
                const message = error instanceof Error ? error.message : String(error)
                console.error(`intercom emulator: internal error: ${message}`)
                this.write(res, {
                    status: 500,
                    body: { type: 'error.list', errors: [{ code: 'server_error', message }] },
                })
            })
        })
        // once() rejects if 'error' comes first (port taken).
        await once(this.server.listen(this.options.port, this.options.host), 'listening')
        this.port = (this.server.address() as AddressInfo).port
        const host = this.options.host.includes(':') ? `[${this.options.host}]` : this.options.host
        this.url = `http://${host}:${this.port}`
    }

    private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
        const chunks: Buffer[] = []
        for await (const chunk of req) chunks.push(chunk as Buffer)
        // Repeated headers (an array in node) joined as fetch's Headers would.
        const headers = Object.entries(req.headers).flatMap(([name, value]) =>
            value === undefined ? [] : [[name, [value].flat().join(', ')]]
        )
        const outcome = this.answer({
            method: req.method ?? 'GET',
            url: new URL(req.url ?? '/', 'http://emulator.invalid'),
            headers: Object.fromEntries(headers),
            raw: Buffer.concat(chunks).toString('utf8'),
        })
        if (outcome.kind === 'drop') return void req.socket.destroy()
        await this.latency(outcome)
        this.write(res, outcome.reply)
    }

    private write(res: ServerResponse, reply: { status: number; body?: unknown }): void {
        if (res.destroyed || res.headersSent) return
        const { status, text, headers } = this.wire(reply)
        res.writeHead(status, { 'Content-Length': Buffer.byteLength(text), ...headers })
        res.end(text)
    }

    async close(): Promise<void> {
        if (this.closed) return
        this.closed = true
        this.stop()
        const closing = new Promise<void>((resolve) => this.server.close(() => resolve()))
        // Keep-alive sockets of fetch clients would otherwise hold close() open for seconds.
        this.server.closeAllConnections()
        await closing
    }
}

/** Starts an emulator on loopback; resolves once it listens. */
export async function startEmulator(options: EmulatorOptions = {}): Promise<Emulator> {
    const emulator = new EmulatorServer(options)
    await emulator.listen()
    return emulator
}
