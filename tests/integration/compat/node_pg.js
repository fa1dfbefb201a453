'use strict';
// node-postgres (`pg` from npm) workload for tests/integration/test_compat.py.
//
//   node node_pg.js DSN [--named]
//
// Runs CRUD, a transaction rolled back, N+1 loops (`SELECT ... WHERE user_id = $1`
// once per parent row: autocommit, inside BEGIN/COMMIT, binary results, and
// many-to-one), eager loads (JOIN, `= ANY($1)`), unique violations (autocommit,
// in a transaction, under a savepoint) and a pool of concurrent clients, on the
// tables np_users / np_posts. Prints one canonical JSON document (sorted keys)
// of everything it read to stdout; the test runs it directly against
// PostgreSQL and through pgcoalesce and compares the two.
//
// --named gives every parameterised statement a name (`{name, text, values}`):
// a named prepared statement parsed once per connection and then only bound
// and executed. Without it node-postgres sends an unnamed Parse each time.

const { Client, Pool, types } = require('pg');

const dsn = process.argv[2];
const named = process.argv.includes('--named');
if (!dsn) {
  console.error('usage: node node_pg.js DSN [--named]');
  process.exit(2);
}

// Parse int8 and numeric as strings (the default) but dates as plain text,
// so the output never depends on the process's time zone.
types.setTypeParser(1082, (v) => v); // date
types.setTypeParser(1114, (v) => v); // timestamp
types.setTypeParser(1184, (v) => v); // timestamptz

// One statement, named or not depending on --named.
function q(client, name, text, values, extra) {
  const cfg = Object.assign({ text }, extra || {});
  if (values !== undefined) cfg.values = values;
  if (named && values !== undefined) cfg.name = name;
  return client.query(cfg);
}

function canon(v) {
  if (v === null || v === undefined) return null;
  if (Buffer.isBuffer(v)) return { hex: v.toString('hex') };
  if (v instanceof Date) return { date: v.toISOString() };
  if (Array.isArray(v)) return v.map(canon);
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'object') {
    const out = {};
    for (const k of Object.keys(v).sort()) out[k] = canon(v[k]);
    return out;
  }
  return v;
}

function errInfo(e) {
  return { code: e.code || null, constraint: e.constraint || null, detail: e.detail || null,
           message: e.message, severity: e.severity || null, table: e.table || null };
}

function fields(res) {
  return res.fields.map((f) => [f.name, f.dataTypeID, f.format]);
}

const CHILD_SQL =
  'SELECT id, title, views, score, tags, meta, published, flag, payload, note ' +
  'FROM np_posts WHERE user_id = $1 ORDER BY id';

async function lazyLoop(client, name, extra) {
  const users = await client.query('SELECT id, name FROM np_users ORDER BY id');
  const out = [];
  for (const u of users.rows) {
    const r = await q(client, name, CHILD_SQL, [u.id], extra);
    out.push({ user: u.id, name: u.name, n: r.rowCount, cmd: r.command, posts: r.rows,
               fields: fields(r) });
  }
  return out;
}

async function main() {
  const out = {};
  const client = new Client({ connectionString: dsn, application_name: 'compat-node-pg' });
  await client.connect();

  // ------------------------------------------------------------ schema
  await client.query('DROP TABLE IF EXISTS np_posts, np_users');
  await client.query(`CREATE TABLE np_users (
      id serial PRIMARY KEY,
      name text NOT NULL,
      email text NOT NULL CONSTRAINT np_users_email_key UNIQUE,
      born date,
      balance numeric(12, 2))`);
  await client.query(`CREATE TABLE np_posts (
      id serial PRIMARY KEY,
      user_id integer NOT NULL REFERENCES np_users(id) ON DELETE CASCADE,
      title text NOT NULL,
      views integer NOT NULL DEFAULT 0,
      score double precision,
      tags text[],
      meta jsonb,
      published date,
      flag boolean,
      payload bytea,
      note text)`);
  await client.query('CREATE INDEX np_posts_user_id ON np_posts (user_id)');

  // ------------------------------------------------------------ create
  const created = [];
  for (let i = 1; i <= 24; i++) {
    const r = await q(client, 'ins_user',
      'INSERT INTO np_users (name, email, born, balance) VALUES ($1, $2, $3, $4) RETURNING id, name, born, balance',
      [`user${i}`, `user${i}@example.com`, `19${50 + i}-0${1 + (i % 9)}-1${i % 10}`,
       (i * 12.5).toFixed(2)]);
    created.push(r.rows[0]);
    for (let j = 1; j <= i % 5; j++) {
      await q(client, 'ins_post',
        'INSERT INTO np_posts (user_id, title, views, score, tags, meta, published, flag, payload, note) ' +
        'VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)',
        [r.rows[0].id, `post ${i}.${j}`, i * j, i / j, [`t${i}`, `k${j}`, j % 2 ? 'odd' : null],
         JSON.stringify({ i, j, s: `it's "${i}" \\ ${j}`, nested: { ok: j % 2 === 0 } }),
         `2024-0${1 + (j % 9)}-2${j}`, j % 3 === 0 ? null : j % 2 === 0,
         Buffer.from([i, j, 0, 255, 39]), j === 2 ? null : `note ü ${'x'.repeat(j * 40)}`]);
    }
  }
  out.created = created;

  // ------------------------------------------------------------ read / update / delete
  out.read_one = (await q(client, 'get_user',
    'SELECT id, name, email, born, balance FROM np_users WHERE id = $1', [3])).rows;
  const upd = await q(client, 'rename',
    'UPDATE np_users SET name = $1 WHERE id = $2 RETURNING id, name', ['renamed', 3]);
  out.updated = { rowCount: upd.rowCount, command: upd.command, rows: upd.rows };
  const bump = await q(client, 'bump',
    'UPDATE np_posts SET views = views + $1 WHERE user_id = $2', [100, 3]);
  out.bumped = { rowCount: bump.rowCount, command: bump.command };
  const del = await q(client, 'del_user', 'DELETE FROM np_users WHERE id = $1', [5]);
  out.deleted = { rowCount: del.rowCount, command: del.command };
  out.counts = (await client.query(
    'SELECT (SELECT count(*) FROM np_users) AS users, (SELECT count(*) FROM np_posts) AS posts, ' +
    '(SELECT sum(views) FROM np_posts) AS views')).rows;

  // ------------------------------------------------------------ N+1 loops
  out.lazy_autocommit = await lazyLoop(client, 'child');
  await client.query('BEGIN');
  out.lazy_in_transaction = await lazyLoop(client, 'child');
  await client.query('COMMIT');
  await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
  out.lazy_repeatable_read = await lazyLoop(client, 'child');
  await client.query('COMMIT');
  // binary results, kept as the raw bytes the server sent (hex in the output)
  const rawBinary = { getTypeParser: (oid, format) => (format === 'binary' ? (b) => b : types.getTypeParser(oid, format)) };
  out.lazy_binary = await lazyLoop(client, 'child', { binary: true, types: rawBinary });
  out.lazy_array_mode = await lazyLoop(client, 'child', { rowMode: 'array' });

  // many-to-one: the author of each post (repeated keys)
  const posts = await client.query('SELECT id, user_id FROM np_posts ORDER BY id');
  out.lazy_authors = [];
  for (const p of posts.rows) {
    const r = await q(client, 'author',
      'SELECT id, name, email, balance FROM np_users WHERE id = $1', [p.user_id]);
    out.lazy_authors.push({ post: p.id, author: r.rows });
  }

  // ------------------------------------------------------------ eager loads
  out.eager_join = (await client.query(
    'SELECT u.id AS user_id, u.name, p.id AS post_id, p.title FROM np_users u ' +
    'LEFT JOIN np_posts p ON p.user_id = u.id ORDER BY u.id, p.id')).rows;
  const ids = (await client.query('SELECT id FROM np_users ORDER BY id')).rows.map((r) => r.id);
  out.eager_any = (await q(client, 'eager_any',
    'SELECT user_id, id, title, tags FROM np_posts WHERE user_id = ANY($1) ORDER BY user_id, id',
    [ids])).rows;

  // ------------------------------------------------------------ transaction rolled back
  await client.query('BEGIN');
  await q(client, 'ins_user2', 'INSERT INTO np_users (name, email) VALUES ($1, $2)',
    ['ghost', 'ghost@example.com']);
  const inside = (await client.query('SELECT count(*) AS n FROM np_users')).rows[0].n;
  await client.query('ROLLBACK');
  const after = (await client.query('SELECT count(*) AS n FROM np_users')).rows[0].n;
  out.rolled_back = { inside, after };

  // ------------------------------------------------------------ unique violations
  try {
    await q(client, 'ins_user2', 'INSERT INTO np_users (name, email) VALUES ($1, $2)',
      ['dup', 'user1@example.com']);
    out.unique_autocommit = 'no error';
  } catch (e) {
    out.unique_autocommit = errInfo(e);
  }
  out.after_unique = (await q(client, 'get_user',
    'SELECT id, name, email, born, balance FROM np_users WHERE id = $1', [1])).rows;

  await client.query('BEGIN');
  try {
    await q(client, 'ins_user2', 'INSERT INTO np_users (name, email) VALUES ($1, $2)',
      ['dup', 'user2@example.com']);
  } catch (e) {
    out.unique_in_transaction = errInfo(e);
  }
  try {
    await client.query('SELECT 1');
    out.aborted_transaction = 'no error';
  } catch (e) {
    out.aborted_transaction = errInfo(e);
  }
  await client.query('ROLLBACK');

  await client.query('BEGIN');
  await client.query('SAVEPOINT sp1');
  try {
    await q(client, 'ins_user2', 'INSERT INTO np_users (name, email) VALUES ($1, $2)',
      ['dup', 'user6@example.com']);
  } catch (e) {
    out.unique_under_savepoint = errInfo(e);
  }
  await client.query('ROLLBACK TO SAVEPOINT sp1');
  const kept = await q(client, 'ins_user3',
    'INSERT INTO np_users (name, email) VALUES ($1, $2) RETURNING id, name', ['kept', 'kept@example.com']);
  await client.query('COMMIT');
  out.savepoint_recovered = kept.rows;

  // other errors: a syntax error and a bad parameter, then the client still works
  try {
    await client.query('SELEC 1');
  } catch (e) {
    out.syntax_error = errInfo(e);
  }
  try {
    await q(client, 'bad_param', 'SELECT id FROM np_users WHERE id = $1', ['not a number']);
  } catch (e) {
    out.bad_parameter = errInfo(e);
  }
  out.after_errors = (await client.query('SELECT count(*) AS n FROM np_users')).rows;

  // a multi-statement simple query
  const multi = await client.query(
    "SELECT 1 AS a; SELECT name FROM np_users WHERE id = 1; UPDATE np_users SET name = name WHERE id < 0");
  out.multi = multi.map((r) => ({ command: r.command, rowCount: r.rowCount, rows: r.rows }));

  await client.end();

  // ------------------------------------------------------------ a pool of concurrent clients
  const pool = new Pool({ connectionString: dsn, max: 4, application_name: 'compat-node-pg-pool' });
  const tasks = [];
  for (let t = 0; t < 6; t++) {
    tasks.push((async () => {
      const c = await pool.connect();
      try {
        const loop = await lazyLoop(c, 'child');
        return loop.map((e) => [e.user, e.n, e.posts.map((p) => p.id)]);
      } finally {
        c.release();
      }
    })());
  }
  out.pool = await Promise.all(tasks);
  // pool.query: a checkout per statement
  const pq = [];
  for (const id of ids.slice(0, 8)) {
    pq.push((await pool.query(named ? { name: 'pool_child', text: CHILD_SQL, values: [id] }
                                    : { text: CHILD_SQL, values: [id] })).rows.map((p) => p.id));
  }
  out.pool_query = pq;
  await pool.end();

  const cleanup = new Client({ connectionString: dsn });
  await cleanup.connect();
  await cleanup.query('DROP TABLE np_posts, np_users');
  await cleanup.end();

  process.stdout.write(JSON.stringify(canon(out)) + '\n');
}

main().catch((e) => {
  console.error('node_pg.js failed:', e && e.stack ? e.stack : e);
  if (e && e.code) console.error('SQLSTATE', e.code);
  process.exit(1);
});
