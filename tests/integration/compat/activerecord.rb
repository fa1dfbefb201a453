# Rails ActiveRecord 6.1 with ruby-pg (Debian's ruby-activerecord and ruby-pg)
# workload for tests/integration/test_compat.py.
#
#   ruby activerecord.rb DSN [--no-prepared]
#
# Models User / Post / Comment on the tables ar_users, ar_posts, ar_comments:
# CRUD (create with has_many, find, update, update_all, increment, destroy
# with dependent: :destroy), lazy loading per row (`user.posts` for every user
# without includes: the N+1 loop; `post.user` per post, a belongs_to whose
# query carries `LIMIT $2`; `post.comments.count` per post), eager loading
# (`includes`/`preload`: an IN list, `eager_load`: a LEFT OUTER JOIN),
# transactions rolled back (raise ActiveRecord::Rollback, an exception),
# ActiveRecord::RecordNotUnique (autocommit, in a transaction, under
# `requires_new: true`'s savepoint), a validation error, find_by / where /
# pluck / group counts, and threads sharing the connection pool.
#
# By default ActiveRecord uses named prepared statements (a1, a2, ... per
# connection, parsed once and then only bound); --no-prepared sets
# prepared_statements: false (values as literals, unnamed statements).
# Prints one canonical JSON document (sorted keys) to stdout.

require "json"
require "bigdecimal"
require "active_record"

dsn = ARGV.find { |a| !a.start_with?("--") } or abort("usage: ruby activerecord.rb DSN [--no-prepared]")
prepared = !ARGV.include?("--no-prepared")

ActiveRecord::Base.logger = nil
ActiveRecord::Base.default_timezone = :utc
ActiveRecord::Base.establish_connection(
  url: dsn, adapter: "postgresql", prepared_statements: prepared, pool: 5,
  application_name: "compat-activerecord", checkout_timeout: 30,
)

def canon(v)
  case v
  when nil then nil
  when Hash then v.keys.map(&:to_s).sort.map { |k| [k, canon(v.key?(k) ? v[k] : v[k.to_sym])] }.to_h
  when Array then v.map { |x| canon(x) }
  when BigDecimal then { "decimal" => v.to_s("F") }
  when Time, DateTime then { "time" => v.utc.iso8601(6) }
  when Date then { "date" => v.iso8601 }
  when ActiveRecord::Base then canon(v.attributes)
  when Symbol then v.to_s
  else v
  end
end

def err_info(e)
  pg = e.respond_to?(:cause) ? e.cause : nil
  res = pg.respond_to?(:result) ? pg.result : nil
  {
    "class" => e.class.name,
    "sqlstate" => res && res.error_field(PG::Result::PG_DIAG_SQLSTATE),
    "constraint" => res && res.error_field(PG::Result::PG_DIAG_CONSTRAINT_NAME),
    "detail" => res && res.error_field(PG::Result::PG_DIAG_MESSAGE_DETAIL),
    "pg_class" => pg && pg.class.name,
  }
end

conn = ActiveRecord::Base.connection
conn.execute("DROP TABLE IF EXISTS ar_comments, ar_posts, ar_users CASCADE")
conn.create_table :ar_users do |t|
  t.string :name, null: false
  t.string :email, null: false
  t.decimal :balance, precision: 12, scale: 2
  t.date :born
  t.jsonb :profile
  t.index :email, unique: true, name: "ar_users_email_key"
end
conn.create_table :ar_posts do |t|
  t.references :user, null: false, foreign_key: { to_table: :ar_users, on_delete: :cascade }
  t.string :title, null: false
  t.text :body
  t.integer :views, null: false, default: 0
  t.boolean :published
  t.datetime :at, precision: 6
  t.string :tags, array: true
end
conn.create_table :ar_comments do |t|
  t.references :post, null: false, foreign_key: { to_table: :ar_posts, on_delete: :cascade }
  t.string :text, null: false
end

class User < ActiveRecord::Base
  self.table_name = "ar_users"
  has_many :posts, -> { order(:id) }, dependent: :destroy
  validates :email, format: { with: /\A[^@\s]+@[^@\s]+\z/ }
end

class Post < ActiveRecord::Base
  self.table_name = "ar_posts"
  belongs_to :user
  has_many :comments, -> { order(:id) }, dependent: :delete_all
end

class Comment < ActiveRecord::Base
  self.table_name = "ar_comments"
  belongs_to :post
end

out = {}

# ---------------------------------------------------------------- create
(1..20).each do |i|
  u = User.create!(name: "user#{i}", email: "user#{i}@example.com",
                   balance: BigDecimal("#{i * 7}.25"), born: Date.new(1960 + i, 1 + i % 12, 1 + i),
                   profile: { "i" => i, "langs" => ["en", i.odd? ? "fr" : "de"],
                              "quote" => "\"#{i}\" isn't \\ ü" })
  (i % 4).times do |j|
    p = u.posts.create!(title: "post #{i}.#{j + 1}", body: "body " * (j + 1), views: i * (j + 1),
                        published: j == 2 ? nil : j.even?,
                        at: Time.utc(2024, j + 1, i, 12, 30, 15, 250_000),
                        tags: ["t#{i}", j.odd? ? nil : "k#{j}", "it's"])
    (j + i % 2).times { |k| p.comments.create!(text: "comment #{k} on #{p.title}") }
  end
end
out["counts_created"] = [User.count, Post.count, Comment.count]

# ---------------------------------------------------------------- read / update / delete
out["find"] = User.find(3)
out["find_by"] = User.find_by(email: "user4@example.com")&.id
u3 = User.find(3)
u3.update!(name: "renamed", profile: u3.profile.merge("renamed" => true))
out["update_all"] = Post.where(user_id: 3).update_all("views = views + 100")
Post.find(1).increment!(:views, 5)
User.find(5).destroy
out["after_delete"] = [User.count, Post.count, Comment.count, Post.sum(:views)]
out["where"] = User.where("name LIKE ?", "user1%").or(User.where("balance > ?", 130))
                   .order(:id).pluck(:id, :name, :balance)
out["group_count"] = Post.group(:user_id).order(:user_id).count.to_a

# ---------------------------------------------------------------- lazy loading (N+1)
out["lazy_posts"] = User.order(:id).map { |u| [u.id, u.posts.to_a] }
out["lazy_authors"] = Post.order(:id).map { |p| [p.id, p.user.email] }
out["lazy_comment_counts"] = Post.order(:id).map { |p| [p.id, p.comments.count] }
out["lazy_in_transaction"] = User.transaction(isolation: :repeatable_read) do
  User.order(:id).map { |u| [u.id, u.posts.map(&:title)] }
end
out["lazy_nested"] = User.where("id < 8").order(:id).map do |u|
  [u.id, u.posts.map { |p| [p.id, p.comments.map(&:text)] }]
end

# ---------------------------------------------------------------- eager loading
out["includes"] = User.includes(:posts).order(:id).map { |u| [u.id, u.posts.map(&:id)] }
out["preload_nested"] = User.preload(posts: :comments).where("id > 12").order(:id)
                            .map { |u| [u.id, u.posts.map { |p| [p.id, p.comments.size] }] }
out["eager_load"] = User.eager_load(:posts).order("ar_users.id, ar_posts.id")
                        .map { |u| [u.id, u.posts.map(&:title)] }
out["joins"] = Post.joins(:user).where(ar_users: { name: "renamed" }).order(:id).pluck(:id, :title)

# ---------------------------------------------------------------- transactions rolled back
inside = nil
User.transaction do
  User.create!(name: "ghost", email: "ghost@example.com")
  inside = User.count
  raise ActiveRecord::Rollback
end
out["rollback"] = [inside, User.count]
begin
  Post.transaction do
    Post.where(user_id: 1).delete_all
    out["exception_inside"] = Post.count
    raise ArgumentError, "roll me back"
  end
rescue ArgumentError => e
  out["exception_rollback"] = [e.message, Post.count]
end

# ---------------------------------------------------------------- errors
begin
  User.create!(name: "dup", email: "user1@example.com")
  out["unique_autocommit"] = "no error"
rescue ActiveRecord::RecordNotUnique => e
  out["unique_autocommit"] = err_info(e)
end
out["after_unique"] = User.find(1).name
begin
  User.transaction do
    User.create!(name: "first", email: "first@example.com")
    User.create!(name: "dup", email: "user2@example.com")
  end
  out["unique_in_transaction"] = "no error"
rescue ActiveRecord::RecordNotUnique => e
  out["unique_in_transaction"] = err_info(e)
end
out["first_rolled_back"] = User.where(email: "first@example.com").count
User.transaction do
  begin
    User.transaction(requires_new: true) do
      User.create!(name: "dup", email: "user3@example.com")
    end
  rescue ActiveRecord::RecordNotUnique => e
    out["unique_under_savepoint"] = err_info(e)
  end
  User.create!(name: "kept", email: "kept@example.com")
end
out["kept"] = User.where(email: "kept@example.com").pluck(:name)
begin
  User.create!(name: "bad", email: "not an email")
rescue ActiveRecord::RecordInvalid => e
  out["validation"] = [e.class.name, e.record.errors.full_messages]
end
begin
  bad = ActiveRecord::Relation::QueryAttribute.new("id", "x", ActiveRecord::Type::String.new)
  conn.select_all("SELECT id FROM ar_users WHERE id = $1", "bad", [bad]).to_a
rescue ActiveRecord::StatementInvalid => e
  out["bad_parameter"] = err_info(e)
end
out["after_errors"] = User.count
out["raw"] = conn.select_all("SELECT id, title, views FROM ar_posts WHERE views > 50 ORDER BY id").to_a

# ---------------------------------------------------------------- threads on the pool
counter = 0
m = Mutex.new
threads = 4.times.map do |t|
  Thread.new do
    ActiveRecord::Base.connection_pool.with_connection do
      r = User.order(:id).map { |u| [u.id, u.posts.map(&:id)] }
      m.synchronize { counter += 1 }
      r
    end
  end
end
out["threads"] = threads.map(&:value)
out["threads_done"] = counter

conn.execute("DROP TABLE ar_comments, ar_posts, ar_users")
ActiveRecord::Base.connection_pool.disconnect!
puts JSON.generate(canon(out))
