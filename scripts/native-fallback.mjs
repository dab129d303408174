// Runs when the native addon failed to build during install: the library still works on the
// TypeScript reference backend (slowly), so the install must not fail. Says so once, clearly.
console.warn(
  'resnet-ts: the native addon could not be built (see the node-gyp output above); ' +
    'falling back to the TypeScript reference kernels, which are much slower. ' +
    'Install a C compiler and python3, then run `npm run build:native`.',
);
