// A node-pg-migrate migration, as an app would ship one (tests/integration/t_lifecycle.sh runs it through
// `pglane migrate` in every timeline database of an app).
'use strict';

exports.up = (pgm) => {
  pgm.createTable('widgets', {
    id: 'id',
    name: { type: 'text', notNull: true },
    created_at: { type: 'timestamptz', notNull: true, default: pgm.func('now()') },
  });
};

exports.down = (pgm) => {
  pgm.dropTable('widgets');
};
