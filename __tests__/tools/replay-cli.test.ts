/** The command lines: the replay's flags and exit codes, and the shared flags helper.
 *
 * The shared helper is tools/lib/flags.ts, as every
 * tool uses it: --help, unknown flags refused with the flag named, every mistake a non-zero exit.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import * as path from 'node:path'
import nock from 'nock'

import { parseCli as parseBench } from '../../tools/bench/bench'
import { startEmulator } from '../../tools/intercom/emulator'
import { parseCliArgs as parseEmulator } from '../../tools/intercom/emulator-cli'
import { choiceFlag, numberFlag, parseFlags, runCli, UsageError } from '../../tools/lib/flags'
import { main, parseCli, USAGE } from '../../tools/replay/cli'
import { parseCli as parseStart } from '../../tools/start'

const EXAMPLES = path.join(__dirname, '..', '..', 'tools', 'replay', 'examples')
const example = (name: string): string => path.join(EXAMPLES, name)

let workDir: string
beforeAll(() => {
    nock.disableNetConnect()
    workDir = mkdtempSync(path.join(tmpdir(), 'replay-cli-test-'))
})
afterAll(() => {
    nock.enableNetConnect()
    rmSync(workDir, { recursive: true, force: true })
})

/** main() with stdout and stderr captured. */
async function runMain(argv: string[]): Promise<{ code: number; out: string; err: string }> {
    const stdout = jest.spyOn(process.stdout, 'write').mockImplementation(() => true)
    const stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true)
    try {
        const code = await main(argv)
        const text = (spy: typeof stdout) => spy.mock.calls.map(([chunk]) => String(chunk)).join('')
        return { code, out: text(stdout), err: text(stderr) }
    } finally {
        stdout.mockRestore()
        stderr.mockRestore()
    }
}

describe('npm run replay', () => {
    test.each([
        [['--help'], 0, /^Usage: npm run replay/],
        [
            ['--config', 'config.json', '--dry-run', 'events.jsonl', 'events-ui.csv'],
            0,
            /2 file\(s\)[\s\S]*Next:/,
        ],
        [['--dry-run', 'events.jsonl'], 2, /--events is missing: name the events to send/],
        [['--events', 'x', '--dry-run'], 2, /Name the export files to replay/],
        [['--events', 'x', 'events.jsonl'], 2, /No Intercom token: set INTERCOM_API_KEY/],
        [['--events', 'x', '--dry-run', 'missing.jsonl'], 2, /No such file: .*missing\.jsonl/],
        [
            ['--events', 'x', '--nope', 'events.jsonl'],
            2,
            /^Unknown option --nope\.\nRun `npm run replay -- --help`/,
        ],
        [
            ['--events', 'x', '--format', 'xml', 'events.jsonl'],
            2,
            /--format must be one of jsonl, csv, parquet, not 'xml'/,
        ],
        [['--events', 'x', '--rate', 'fast', 'events.jsonl'], 2, /--rate needs a number, not 'fast'/],
        [['--events', 'x', '--concurrency', '0', 'events.jsonl'], 2, /--concurrency must be ≥ 1/],
        [
            ['--events', 'x', '--seed-contacts', 'c.json', 'events.jsonl'],
            2,
            /--seed-contacts goes with --emulator/,
        ],
        [['--events', 'x', '--file'], 2, /--file needs a value/],
        [['--events', 'x', '--set', 'triggeringEvent=x', 'events.jsonl'], 2, /not a plugin.json key/],
        [
            ['--events', 'x', '--emulator-url', 'http://10.0.0.1:4010', 'events.jsonl'],
            2,
            /must be on this machine/,
        ],
        [
            ['--events', 'x', '--emulator', '--dry-run', 'events.jsonl'],
            2,
            /Choose one target: --dry-run or --emulator/,
        ],
    ])('%j exits %p', async (argv, code, message) => {
        const withPaths = argv.map((arg) =>
            /\.(jsonl|csv|json)$/.test(arg) && arg !== 'c.json' ? example(arg) : arg
        )
        const dir = ['--checkpoint-dir', path.join(workDir, 'checkpoints'), '--no-progress']
        const result = await runMain([...withPaths, ...dir])
        expect(result.code).toBe(code)
        expect(code === 2 ? result.err : result.out).toMatch(message)
    })

    test('--emulator-url: a running emulator keeps its checkpoint, so the same command finds nothing left', async () => {
        nock.enableNetConnect('127.0.0.1')
        const emulator = await startEmulator({
            contacts: JSON.parse(readFileSync(example('contacts.json'), 'utf8')),
        })
        try {
            const argv = [
                '--config',
                example('config.json'),
                '--emulator-url',
                emulator.url,
                example('events.parquet'),
            ]
            const dir = ['--checkpoint-dir', path.join(workDir, 'emulator-url'), '--no-progress']
            const first = await runMain([...argv, ...dir])
            expect(first.code).toBe(0)
            expect(first.out).toMatch(
                /events\.parquet \(Parquet\): complete\n\s+rows read\s+6\n\s+delivered\s+5/
            )
            expect(emulator.events()).toHaveLength(5)
            const again = await runMain([...argv, ...dir])
            expect(again.code).toBe(0)
            expect(again.err).toMatch(/already delivered to this target with this config: nothing to do/)
            expect(emulator.events().every((event) => event.received === 1)).toBe(true)
        } finally {
            await emulator.close()
            nock.disableNetConnect()
        }
    })

    const files: Record<string, string> = {
        'config.json': JSON.stringify({ triggeringEvents: 'a', region: 'AU', metadataProperties: 'm' }),
    }
    const read = (file: string): string => files[file] ?? readFileSync(file, 'utf8')
    const env = { INTERCOM_API_KEY: 'env-token', INTERCOM_REGION: 'EU' }

    test('flags override --config, which overrides the environment; inputs come as arguments or --file', () => {
        const { options } = parseCli(
            [
                '--file',
                'a.jsonl',
                'b.parquet',
                '--config',
                'config.json',
                '--events',
                'signed_up,purchase',
                '--map',
                '$identify:identified',
                '--set',
                'contactSync=create or update contacts',
                '--rate',
                '50',
                '--no-progress',
                'exports/*.csv.gz',
            ],
            env,
            read
        )
        expect(options.inputs).toEqual(['a.jsonl', 'b.parquet', 'exports/*.csv.gz'])
        expect(options.config).toEqual({
            intercomApiKey: 'env-token',
            region: 'AU',
            triggeringEvents: 'signed_up,purchase',
            metadataProperties: 'm',
            eventNameMapping: '$identify:identified',
            contactSync: 'create or update contacts',
        })
        expect(options).toMatchObject({ target: { kind: 'intercom' }, rate: 50, progress: false })
    })

    test('the usage names every flag and the shipped examples', () => {
        for (const flag of [
            '--file',
            '--format',
            '--emulator',
            '--seed-contacts',
            '--dry-run',
            '--token',
            '--region',
            '--events',
            '--metadata',
            '--map',
            '--config',
            '--set',
            '--limit',
            '--rate',
            '--concurrency',
            '--checkpoint-dir',
            '--restart',
            '--no-progress',
            '--verbose',
        ]) {
            expect(USAGE).toContain(flag)
        }
        expect(USAGE).toContain('tools/replay/examples/events.jsonl')
    })
})

describe('the shared flags helper, as every tool uses it', () => {
    test.each([
        ['bench', () => parseBench(['--bogus'])],
        ['start', () => parseStart(['--bogus'])],
        ['emulator-cli', () => parseEmulator(['--bogus'])],
        ['replay', () => parseCli(['--bogus'])],
    ])('%s refuses an unknown flag, naming it', (_tool, parse) => {
        expect(parse).toThrow(new UsageError('Unknown option --bogus.'))
    })

    test.each([
        ['bench', () => parseBench(['--help'])],
        ['start', () => parseStart(['--help'])],
        ['emulator-cli', () => parseEmulator(['--help'])],
        ['replay', () => parseCli(['--help'])],
    ])('%s knows --help', (_tool, parse) => {
        expect(parse()).toMatchObject({ help: true })
    })

    test('number and choice flags name the flag and the value', () => {
        expect(numberFlag('n', '3', { integer: true, min: 1 })).toBe(3)
        expect(numberFlag('n', undefined)).toBeUndefined()
        expect(() => numberFlag('n', '1.5', { integer: true })).toThrow(
            "--n needs a whole number, not '1.5'."
        )
        expect(() => numberFlag('n', '', {})).toThrow("--n needs a number, not ''.")
        expect(() => numberFlag('share', '2', { min: 0, max: 1 })).toThrow(
            '--share must be ≥ 0 and ≤ 1, not 2.'
        )
        expect(choiceFlag('mode', 'a', ['a', 'b'])).toBe('a')
        expect(() => choiceFlag('mode', 'c', ['a', 'b'])).toThrow("--mode must be one of a, b, not 'c'.")
        expect(() => parseFlags(['--on=yes'], { on: { type: 'boolean' } })).toThrow('--on takes no value.')
        expect(() => parseFlags(['stray'], { help: { type: 'boolean' } })).toThrow(
            /Unexpected argument 'stray'/
        )
    })

    test('runCli: a usage error exits 2 with a pointer to --help, any other error 1, success its own code', async () => {
        const lines: string[] = []
        const streams = { out: (text: string) => lines.push(text), err: (text: string) => lines.push(text) }
        expect(await runCli('tool', () => Promise.reject(new UsageError('bad flag')), streams)).toBe(2)
        expect(await runCli('tool', () => Promise.reject(new Error('disk full')), streams)).toBe(1)
        expect(await runCli('tool', () => 0, streams)).toBe(0)
        expect(lines).toEqual(['bad flag\nRun `tool --help` for the flags.\n', 'disk full\n'])
    })
})
