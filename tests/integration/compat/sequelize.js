'use strict';
// Sequelize 6 (postgres dialect over node-postgres) workload for
// tests/integration/test_compat.py.
//
//   node sequelize.js DSN
//
// Models User / Post / Tag on the tables sq_users, sq_posts, sq_tags: CRUD
// (create with nested include, bulkCreate, findByPk, update, increment,
// destroy with cascade), lazy loading per row (`user.getPosts()` for every
// user: the N+1 loop; `post.getUser()` / `post.getTags()` per post), eager
// loading (`include` as a JOIN, `separate: true` as an IN list, nested
// includes), managed and unmanaged transactions rolled back,
// UniqueConstraintError (autocommit, in a managed transaction, under a
// nested transaction's savepoint), a validation error, raw queries with bind
// parameters and replacements, and a few concurrent transactions on a pool.
// Prints one canonical JSON document (sorted keys) to stdout.

const { Sequelize, DataTypes, Op, Transaction } = require('sequelize');

const dsn = process.argv[2];
if (!dsn) {
  console.error('usage: node sequelize.js DSN');
  process.exit(2);
}

function canon(v) {
  if (v === null || v === undefined) return null;
  if (Buffer.isBuffer(v)) return { hex: v.toString('hex') };
  if (v instanceof Date) return { date: v.toISOString() };
  if (Array.isArray(v)) return v.map(canon);
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'object') {
    if (typeof v.get === 'function' && v.constructor && v.constructor.rawAttributes) {
      return canon(v.get({ plain: true }));
    }
    const out = {};
    for (const k of Object.keys(v).sort()) out[k] = canon(v[k]);
    return out;
  }
  return v;
}

function errInfo(e) {
  const parent = e.parent || e.original || {};
  return {
    name: e.name,
    code: parent.code || null,
    constraint: parent.constraint || null,
    detail: parent.detail || null,
    fields: e.fields || null,
    errors: (e.errors || []).map((x) => ({ message: x.message, path: x.path, type: x.type,
                                           validatorKey: x.validatorKey || null })),
  };
}

async function main() {
  const sequelize = new Sequelize(dsn, {
    dialect: 'postgres',
    logging: false,
    timezone: '+00:00',
    pool: { max: 4, min: 0, idle: 1000, acquire: 30000 },
    dialectOptions: { application_name: 'compat-sequelize' },
    define: { timestamps: false, underscored: true },
  });

  const User = sequelize.define('User', {
    name: { type: DataTypes.STRING(50), allowNull: false },
    email: { type: DataTypes.STRING(100), allowNull: false, unique: 'sq_users_email_key',
             validate: { isEmail: true } },
    balance: { type: DataTypes.DECIMAL(12, 2) },
    born: { type: DataTypes.DATEONLY },
    profile: { type: DataTypes.JSONB },
  }, { tableName: 'sq_users' });
  const Post = sequelize.define('Post', {
    title: { type: DataTypes.STRING(200), allowNull: false },
    body: { type: DataTypes.TEXT },
    views: { type: DataTypes.INTEGER, allowNull: false, defaultValue: 0 },
    published: { type: DataTypes.BOOLEAN },
    at: { type: DataTypes.DATE },
  }, { tableName: 'sq_posts', indexes: [{ fields: ['user_id'] }] });
  const Tag = sequelize.define('Tag', {
    label: { type: DataTypes.STRING(30), allowNull: false, unique: true },
  }, { tableName: 'sq_tags' });
  const PostTag = sequelize.define('PostTag', {}, { tableName: 'sq_post_tags' });

  User.hasMany(Post, { as: 'posts', foreignKey: { name: 'userId', allowNull: false },
                       onDelete: 'CASCADE' });
  Post.belongsTo(User, { as: 'author', foreignKey: { name: 'userId', allowNull: false } });
  Post.belongsToMany(Tag, { through: PostTag, as: 'tags', foreignKey: 'postId',
                            otherKey: 'tagId' });
  Tag.belongsToMany(Post, { through: PostTag, as: 'posts', foreignKey: 'tagId',
                            otherKey: 'postId' });

  const out = {};
  await sequelize.authenticate();
  await sequelize.drop();
  await sequelize.query('DROP TABLE IF EXISTS sq_post_tags, sq_posts, sq_tags, sq_users CASCADE');
  await sequelize.sync({ force: true });

  // ------------------------------------------------------------ create
  const tags = await Tag.bulkCreate(['red', 'green', 'blue', "it's"].map((label) => ({ label })),
                                    { returning: true });
  for (let i = 1; i <= 20; i++) {
    // In a transaction: one connection, so the nested posts get their ids in
    // order (outside one Sequelize inserts them concurrently on the pool).
    await sequelize.transaction(async (transaction) => {
    const u = await User.create({
      name: `user${i}`, email: `user${i}@example.com`, balance: (i * 7.25).toFixed(2),
      born: `19${60 + i}-0${1 + (i % 9)}-1${i % 10}`,
      profile: { i, langs: ['en', i % 2 ? 'fr' : 'de'], quote: `"${i}" isn't \\ ü` },
      posts: Array.from({ length: i % 4 }, (_, j) => ({
        title: `post ${i}.${j + 1}`, body: 'body '.repeat(j + 1), views: i * (j + 1),
        published: j % 3 === 2 ? null : j % 2 === 0,
        at: new Date(Date.UTC(2024, j, i, 12, 30, 15, 250)),
      })),
    }, { include: [{ model: Post, as: 'posts' }], transaction });
    for (const [k, p] of u.posts.entries()) {
      await p.setTags([tags[(i + k) % 4], tags[(i + k + 1) % 4]].slice(0, 1 + (k % 2)),
                      { transaction });
    }
    });
  }
  out.counts_created = [await User.count(), await Post.count(), await PostTag.count()];

  // ------------------------------------------------------------ read / update / delete
  out.find_by_pk = await User.findByPk(3);
  const u3 = await User.findByPk(3);
  u3.name = 'renamed';
  await u3.save();
  await Post.increment({ views: 100 }, { where: { userId: 3 } });
  const [affected] = await Post.update({ body: 'edited' }, { where: { userId: { [Op.in]: [6, 7] } } });
  out.updated = { affected, user: await User.findByPk(3, { attributes: ['id', 'name'] }),
                  views: await Post.sum('views') };
  await (await User.findByPk(5)).destroy();
  out.after_delete = [await User.count(), await Post.count(), await PostTag.count()];
  out.find_where = await User.findAll({
    where: { [Op.or]: [{ name: { [Op.like]: 'user1%' } }, { balance: { [Op.gt]: 130 } }] },
    order: [['id', 'ASC']], attributes: ['id', 'name', 'balance'],
  });

  // ------------------------------------------------------------ lazy loading (N+1)
  const users = await User.findAll({ order: [['id', 'ASC']] });
  out.lazy_posts = [];
  for (const u of users) {
    const posts = await u.getPosts({ order: [['id', 'ASC']] });
    out.lazy_posts.push({ user: u.id, posts });
  }
  // the same loop without ORDER BY on the children (rows sorted here)
  out.lazy_posts_unordered = [];
  for (const u of users) {
    const posts = await u.getPosts({ attributes: ['id', 'title', 'views'] });
    out.lazy_posts_unordered.push({ user: u.id, posts: posts.map((p) => p.get({ plain: true }))
                                                            .sort((a, b) => a.id - b.id) });
  }
  // many-to-one and many-to-many per post
  const posts = await Post.findAll({ order: [['id', 'ASC']] });
  out.lazy_authors = [];
  out.lazy_tags = [];
  for (const p of posts) {
    const a = await p.getAuthor({ attributes: ['id', 'email'] });
    out.lazy_authors.push([p.id, a && a.email]);
  }
  for (const p of posts) {
    const t = await p.getTags({ order: [['id', 'ASC']], joinTableAttributes: [] });
    out.lazy_tags.push([p.id, t.map((x) => x.label)]);
  }
  // lazy loading inside a transaction (REPEATABLE READ)
  out.lazy_in_transaction = await sequelize.transaction(
    { isolationLevel: Transaction.ISOLATION_LEVELS.REPEATABLE_READ }, async (transaction) => {
      const us = await User.findAll({ order: [['id', 'ASC']], transaction });
      const res = [];
      for (const u of us) {
        res.push([u.id, (await u.getPosts({ order: [['id', 'ASC']], transaction })).map((p) => p.title)]);
      }
      return res;
    });

  // ------------------------------------------------------------ eager loading
  out.eager_join = await User.findAll({
    include: [{ model: Post, as: 'posts', include: [{ model: Tag, as: 'tags', through: { attributes: [] } }] }],
    order: [['id', 'ASC'], [{ model: Post, as: 'posts' }, 'id', 'ASC'],
            [{ model: Post, as: 'posts' }, { model: Tag, as: 'tags' }, 'id', 'ASC']],
  });
  out.eager_separate = await User.findAll({
    where: { id: { [Op.gt]: 10 } },
    include: [{ model: Post, as: 'posts', separate: true, order: [['id', 'ASC']] }],
    order: [['id', 'ASC']],
  });
  out.eager_belongs_to = await Post.findAll({
    include: [{ model: User, as: 'author', attributes: ['id', 'name'] }],
    order: [['id', 'ASC']], limit: 10,
  });
  out.aggregate = await User.findAll({
    attributes: ['id', [sequelize.fn('COUNT', sequelize.col('posts.id')), 'n_posts']],
    include: [{ model: Post, as: 'posts', attributes: [] }],
    group: ['User.id'], order: [['id', 'ASC']], raw: true,
  });

  // ------------------------------------------------------------ transactions rolled back
  try {
    await sequelize.transaction(async (transaction) => {
      await User.create({ name: 'ghost', email: 'ghost@example.com' }, { transaction });
      out.managed_inside = await User.count({ transaction });
      throw new Error('roll me back');
    });
  } catch (e) {
    out.managed_error = e.message;
  }
  out.managed_after = await User.count();
  const t = await sequelize.transaction();
  await Post.destroy({ where: { userId: 1 }, transaction: t });
  out.unmanaged_inside = await Post.count({ transaction: t });
  await t.rollback();
  out.unmanaged_after = await Post.count();

  // ------------------------------------------------------------ errors
  try {
    await User.create({ name: 'dup', email: 'user1@example.com' });
    out.unique_autocommit = 'no error';
  } catch (e) {
    out.unique_autocommit = errInfo(e);
  }
  try {
    await sequelize.transaction(async (transaction) => {
      await User.create({ name: 'ok first', email: 'first@example.com' }, { transaction });
      await User.create({ name: 'dup', email: 'user2@example.com' }, { transaction });
    });
    out.unique_in_transaction = 'no error';
  } catch (e) {
    out.unique_in_transaction = errInfo(e);
  }
  out.first_rolled_back = await User.count({ where: { email: 'first@example.com' } });
  out.nested = await sequelize.transaction(async (transaction) => {
    let inner;
    try {
      await sequelize.transaction({ transaction }, async (sp) => {
        await User.create({ name: 'dup', email: 'user3@example.com' }, { transaction: sp });
      });
    } catch (e) {
      inner = errInfo(e);
    }
    const kept = await User.create({ name: 'kept', email: 'kept@example.com' }, { transaction });
    return { inner, kept: kept.name };
  });
  out.kept = await User.count({ where: { email: 'kept@example.com' } });
  try {
    await User.create({ name: 'bad', email: 'not an email' });
  } catch (e) {
    out.validation = errInfo(e);
  }
  try {
    await Tag.create({ label: 'red' });
  } catch (e) {
    out.unique_tag = errInfo(e);
  }
  const [tag, created] = await Tag.findOrCreate({ where: { label: 'red' } });
  out.find_or_create = [tag.label, created];

  // ------------------------------------------------------------ raw queries
  out.raw_bind = await sequelize.query(
    'SELECT id, title, views FROM sq_posts WHERE views > $1 AND title LIKE $2 ORDER BY id',
    { bind: [50, 'post%'], type: sequelize.QueryTypes.SELECT });
  out.raw_replacements = await sequelize.query(
    'SELECT id, name FROM sq_users WHERE id IN (:ids) ORDER BY id',
    { replacements: { ids: [1, 2, 3, 4] }, type: sequelize.QueryTypes.SELECT });

  // ------------------------------------------------------------ concurrent transactions
  await sequelize.query('CREATE TABLE IF NOT EXISTS sq_counter (id int PRIMARY KEY, n int NOT NULL)');
  await sequelize.query('INSERT INTO sq_counter VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET n = 0');
  await Promise.all(Array.from({ length: 6 }, async () => {
    for (let k = 0; k < 10; k++) {
      await sequelize.transaction(async (transaction) => {
        const [rows] = await sequelize.query('SELECT n FROM sq_counter WHERE id = 1 FOR UPDATE',
                                             { transaction });
        await sequelize.query('UPDATE sq_counter SET n = $1 WHERE id = 1',
                              { bind: [rows[0].n + 1], transaction });
      });
    }
  }));
  out.counter = (await sequelize.query('SELECT n FROM sq_counter WHERE id = 1',
                                       { type: sequelize.QueryTypes.SELECT }))[0].n;

  await sequelize.query('DROP TABLE sq_counter');
  await sequelize.drop();
  await sequelize.close();
  process.stdout.write(JSON.stringify(canon(out)) + '\n');
}

main().catch((e) => {
  console.error('sequelize.js failed:', e && e.stack ? e.stack : e);
  if (e && e.parent) console.error('SQLSTATE', e.parent.code, e.parent.message);
  process.exit(1);
});
