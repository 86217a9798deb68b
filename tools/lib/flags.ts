/** The command line of every tool: node:util parseArgs with --help, number and choice flags, and errors that name the flag. */
import { parseArgs } from 'node:util'

/** A mistake on the command line: the tool prints the message and a pointer to --help, and exits 2. */
export class UsageError extends Error {}

export type FlagTable = Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }>

/** A flag table from names: `strings` take a value, `switches` (list `help` too) do not. */
export function flagTable<S extends string, B extends string>(strings: readonly S[], switches: readonly B[]) {
    const entries = [
        ...strings.map((name) => [name, { type: 'string' }]),
        ...switches.map((name) => [name, { type: 'boolean' }]),
    ]
    return Object.fromEntries(entries) as Record<S, { type: 'string' }> & Record<B, { type: 'boolean' }>
}

/** parseArgs' own messages, rewritten to say which flag is wrong and where to look. */
function usageMessage(error: unknown): string {
    const { code, message = String(error) } = error as { code?: string; message?: string }
    const quoted = /'([^']+)'/.exec(message)?.[1] ?? ''
    const flag = quoted.split(' ')[0]
    switch (code) {
        case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
            return `Unknown option ${quoted}.`
        case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
            return /does not take an argument/.test(message)
                ? `${flag} takes no value.`
                : `${flag} needs a value (one starting with a dash goes as ${flag}=-x).`
        case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
            return `Unexpected argument '${quoted}': every input goes after a flag.`
        default:
            return message
    }
}

/**
 * `argv` read against `table` (which must list `help`); any other flag is a UsageError. The return type is
 * parseArgs' own, so each flag keeps its type (string, boolean, string[]).
 */
export function parseFlags<T extends FlagTable>(argv: string[], table: T, allowPositionals = false) {
    try {
        return parseArgs({ args: argv, options: table, strict: true, allowPositionals })
    } catch (error) {
        throw new UsageError(usageMessage(error))
    }
}

/** A number flag: undefined when absent, a UsageError naming the flag when it is not a number in range. */
export function numberFlag(
    name: string,
    value: string | undefined,
    rule: { integer?: boolean; min?: number; max?: number } = {}
): number | undefined {
    if (value === undefined) return undefined
    const parsed = Number(value)
    const kind = rule.integer ? 'a whole number' : 'a number'
    if (value.trim() === '' || !Number.isFinite(parsed) || (rule.integer && !Number.isInteger(parsed))) {
        throw new UsageError(`--${name} needs ${kind}, not '${value}'.`)
    }
    if ((rule.min !== undefined && parsed < rule.min) || (rule.max !== undefined && parsed > rule.max)) {
        const range = [rule.min !== undefined && `≥ ${rule.min}`, rule.max !== undefined && `≤ ${rule.max}`]
        throw new UsageError(`--${name} must be ${range.filter(Boolean).join(' and ')}, not ${value}.`)
    }
    return parsed
}

/** A flag with a fixed set of values. */
export function choiceFlag<T extends string>(
    name: string,
    value: string | undefined,
    allowed: readonly T[]
): T | undefined {
    if (value !== undefined && !(allowed as readonly string[]).includes(value)) {
        throw new UsageError(`--${name} must be one of ${allowed.join(', ')}, not '${value}'.`)
    }
    return value as T | undefined
}

type CliStreams = Record<'out' | 'err', (text: string) => void>

const PROCESS_STREAMS: CliStreams = {
    out: (text) => process.stdout.write(text),
    err: (text) => process.stderr.write(text),
}

/**
 * Runs a tool's body and turns the outcome into an exit code: a UsageError prints its message and how to get
 * help (exit 2); anything else escaping the body is a fault of the tool (exit 1, message only).
 */
export async function runCli(
    command: string,
    body: () => Promise<number> | number,
    streams: CliStreams = PROCESS_STREAMS
): Promise<number> {
    try {
        return await body()
    } catch (error) {
        const usage = error instanceof UsageError
        const message = error instanceof Error ? error.message : String(error)
        streams.err(usage ? `${message}\nRun \`${command} --help\` for the flags.\n` : `${message}\n`)
        return usage ? 2 : 1
    }
}

/** Prints `usage` and returns true when --help was given: the caller then exits 0 without doing anything. */
export function printedHelp(help: boolean | undefined, usage: string): boolean {
    if (help) PROCESS_STREAMS.out(`${usage}\n`)
    return Boolean(help)
}
