// Jest: ts-jest runs every __tests__/**/*.test.ts; type checking is left to `tsc --noEmit`.
/** @type {import('jest').Config} */
module.exports = {
    preset: 'ts-jest',
    testEnvironment: 'node',
    testMatch: ['**/__tests__/**/*.test.ts'],
    // Type checking is done once by `tsc --noEmit` in `npm test`; ts-jest only transpiles.
    transform: { '^.+\\.ts$': ['ts-jest', { diagnostics: false }] },
    testTimeout: 30000,
}
