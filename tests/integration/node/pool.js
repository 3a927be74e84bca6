// pool.js: node's pg configured only by the environment (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD,
// PGSSLMODE), as an app run under `pglane exec` or after `eval "$(pglane env ...)"` would be.
// Prints the database it landed in; exits 1 with "ERROR <SQLSTATE> <message>" on failure.
'use strict';

const { Pool } = require('pg');

async function main() {
  const pool = new Pool();
  try {
    const res = await pool.query('SELECT current_database() AS db');
    console.log(res.rows[0].db);
  } finally {
    await pool.end();
  }
}

main().catch((err) => {
  console.log(`ERROR ${err.code || '-----'} ${String(err.message).replace(/\s+/g, ' ')}`);
  process.exit(1);
});
