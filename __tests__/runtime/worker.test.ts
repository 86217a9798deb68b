/** The worker process's command line: what it accepts and how it refuses the rest. */
import { spawnSync } from 'node:child_process'

import { parseWorkerArgs, WORKER_USAGE } from '../../tools/runtime/worker'

test('reads the variant, the emulator, Redis and the drain settings', () => {
    const args = parseWorkerArgs(
        [
            '--variant',
            '4',
            '--emulator',
            'http://127.0.0.1:9',
            '--redis',
            'redis://127.0.0.1:7',
            '--redis-mode',
            'redis-6.0',
        ].concat([
            '--minutes',
            '5',
            '--concurrency',
            '3',
            '--delay-scale',
            '0.01',
            '--plugin-id',
            '9',
            '--events',
            'in.jsonl',
        ])
    )
    expect(args).toEqual({
        variant: 4,
        emulator: 'http://127.0.0.1:9',
        redis: 'redis://127.0.0.1:7',
        redisMode: 'redis-6.0',
        events: 'in.jsonl',
        config: { intercomApiKey: 'test-token', triggeringEvents: 'signed_up' },
        minutes: 5,
        concurrency: 3,
        delayScale: 0.01,
        pluginId: 9,
    })
})

test.each([
    [['--emulator', 'http://x'], '--variant must be 1 to 6'],
    [['--variant', '7', '--emulator', 'http://x'], '--variant must be 1 to 6'],
    [['--variant', '1'], '--emulator is required'],
    [['--variant', '1', '--emulator', 'http://x', '--bogus', '1'], 'Unknown flag --bogus'],
    [
        ['--variant', '1', '--emulator', 'http://x', '--redis-mode', 'redis-5'],
        '--redis-mode is redis-7 or redis-6.0',
    ],
    [['--variant', '1', '--emulator', 'http://x', '--minutes', '-1'], '--minutes needs a number >= 0'],
])('%j is refused: %s', (argv, message) => {
    expect(() => parseWorkerArgs(argv)).toThrow(message)
})

test('--help prints the usage and exits 0; a bad flag exits 2 with the reason', () => {
    const run = (...args: string[]) =>
        spawnSync(process.execPath, ['--import', 'tsx', 'tools/runtime/worker.ts', ...args], {
            encoding: 'utf8',
        })
    const help = run('--help')
    expect(help.status).toBe(0)
    expect(help.stdout.trim()).toBe(WORKER_USAGE)
    const bad = run('--variant', '0')
    expect(bad.status).toBe(2)
    expect(bad.stderr).toContain('--variant must be 1 to 6')
})
