'use strict';
/**
 * Two "installed" backend versions for handoff tests, made the way tests/e2e/test_handoff.py
 * makes them: a copy of the dbtkd and dbtkctl sources with its own `__version__`, in its own
 * virtual environment (no pip; a .pth puts the copy first and the project venv's packages
 * after it), with its own dbtkd/dbtkctl console scripts. Returns the bin dir.
 */

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const REPO = path.resolve(__dirname, '..', '..');

function projectPython(dbtkctl) {
  return path.join(path.dirname(dbtkctl), 'python');
}

function purelib(python) {
  return execFileSync(python, ['-c', "import sysconfig; print(sysconfig.get_paths()['purelib'])"], {
    encoding: 'utf8',
  }).trim();
}

function installCopy(base, version, dbtkctl) {
  const source = path.join(base, `src-${version}`);
  for (const pkg of ['dbtkd', 'dbtkctl']) {
    fs.cpSync(path.join(REPO, pkg), path.join(source, pkg), {
      recursive: true,
      filter: (src) => !src.includes('__pycache__'),
    });
  }
  const init = path.join(source, 'dbtkd', '__init__.py');
  fs.writeFileSync(
    init,
    fs.readFileSync(init, 'utf8').replace('__version__ = "', `__version__ = "${version}"  # `),
  );
  const envDir = path.join(base, `venv-${version}`);
  const parent = projectPython(dbtkctl);
  execFileSync(parent, ['-m', 'venv', '--without-pip', envDir]);
  const python = path.join(envDir, 'bin', 'python');
  fs.writeFileSync(path.join(purelib(python), 'dbtk-copy.pth'), `${source}\n${purelib(parent)}\n`);
  for (const name of ['dbtkd', 'dbtkctl']) {
    const script = path.join(envDir, 'bin', name);
    fs.writeFileSync(script, `#!${python}\nfrom ${name}.__main__ import run\nrun()\n`, { mode: 0o755 });
  }
  return path.join(envDir, 'bin');
}

module.exports = { installCopy };
