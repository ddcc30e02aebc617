import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.Date;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Timestamp;

/**
 * Exercises the PostgreSQL JDBC driver (pgjdbc) the way JDBC tools such as DBeaver and
 * Metabase do, and prints what it sees as {@code key=value} lines for test_jdbc.py to check.
 *
 * <p>Usage: {@code java JdbcCheck <jdbc-url> <table> <view>}. The table and view must already
 * exist in schema {@code public}: the table with columns (id bigint, name text, amount
 * numeric(10,2), flag boolean, day date, ts timestamp, ...) and the view selecting from it.
 *
 * <p>Each step runs on its own; a failing step prints {@code FAIL <step>: <SQLSTATE> <message>}
 * and the program goes on with the next one, so one server bug does not hide the others. The
 * exit status is 1 when any step failed.
 */
public class JdbcCheck {
    private static boolean failed = false;

    interface Step {
        void run() throws Exception;
    }

    /** Runs one named step, printing its failure instead of stopping. */
    private static void step(String name, Step body) {
        System.out.println("BEGIN " + name);
        try {
            body.run();
            System.out.println("OK " + name);
        } catch (SQLException e) {
            failed = true;
            System.out.println("FAIL " + name + ": " + e.getSQLState() + " " + oneLine(e.getMessage()));
        } catch (Exception e) {
            failed = true;
            System.out.println("FAIL " + name + ": " + e.getClass().getName() + " " + oneLine(e.getMessage()));
        }
    }

    private static String oneLine(String s) {
        return s == null ? "" : s.replace('\n', ' ');
    }

    private static void out(String key, Object... fields) {
        StringBuilder sb = new StringBuilder(key).append('=');
        for (int i = 0; i < fields.length; i++) {
            if (i > 0) {
                sb.append('|');
            }
            sb.append(fields[i]);
        }
        System.out.println(sb);
    }

    public static void main(String[] args) throws Exception {
        String url = args[0];
        String table = args[1];
        String view = args[2];
        try (Connection conn = DriverManager.getConnection(url)) {
            run(conn, table, view);
        } catch (SQLException e) {
            System.out.println("FAIL connect: " + e.getSQLState() + " " + oneLine(e.getMessage()));
            System.exit(1);
        }
        System.exit(failed ? 1 : 0);
    }

    private static void run(Connection conn, String table, String view) {
        String qualified = "public." + table;

        step("metadata", () -> {
            DatabaseMetaData md = conn.getMetaData();
            out("product", md.getDatabaseProductName(), md.getDatabaseProductVersion());
            out("major", md.getDatabaseMajorVersion());
            out("identifier_quote", md.getIdentifierQuoteString());
            out("user", md.getUserName());
            out("catalog", conn.getCatalog());
            out("schema", conn.getSchema());
        });

        // pgjdbc switches a PreparedStatement to a named server-side statement (and binary
        // transfer) from its 5th execution (prepareThreshold=5): run 7 times to cover both.
        step("prepared_insert", () -> {
            String sql = "insert into " + qualified + " (id, name, amount, flag, day, ts) values (?, ?, ?, ?, ?, ?)";
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                for (int i = 1; i <= 7; i++) {
                    ps.setLong(1, i);
                    ps.setString(2, "name " + i);
                    ps.setBigDecimal(3, new BigDecimal(i + ".25"));
                    ps.setBoolean(4, i % 2 == 0);
                    ps.setDate(5, Date.valueOf("2024-01-0" + i));
                    ps.setTimestamp(6, Timestamp.valueOf("2024-01-0" + i + " 10:30:00"));
                    out("insert_count", ps.executeUpdate());
                }
            }
        });

        step("batch_insert", () -> {
            String sql = "insert into " + qualified + " (id, name) values (?, ?)";
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                for (int i = 100; i < 103; i++) {
                    ps.setLong(1, i);
                    ps.setString(2, "batch " + i);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                StringBuilder sb = new StringBuilder();
                for (int c : counts) {
                    sb.append(sb.length() > 0 ? "," : "").append(c);
                }
                out("batch_counts", sb);
            }
        });

        step("prepared_select", () -> {
            String sql = "select id, name, amount, flag, day, ts from " + qualified
                    + " where id >= ? and name <> ? and id < ? order by id";
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                for (int run = 1; run <= 6; run++) {
                    ps.setLong(1, 2);
                    ps.setString(2, "name 3");
                    ps.setInt(3, 100);
                    try (ResultSet rs = ps.executeQuery()) {
                        int n = 0;
                        while (rs.next()) {
                            n++;
                            if (run == 6) {
                                out("row", rs.getLong(1), rs.getString(2), rs.getBigDecimal(3), rs.getBoolean(4),
                                        rs.getDate(5), rs.getTimestamp(6));
                            }
                        }
                        out("select_rows_run" + run, n);
                        if (run == 6) {
                            ResultSetMetaData rsmd = rs.getMetaData();
                            for (int c = 1; c <= rsmd.getColumnCount(); c++) {
                                out("rsmeta", rsmd.getColumnLabel(c), rsmd.getColumnTypeName(c), rsmd.getColumnType(c),
                                        rsmd.getTableName(c), rsmd.isNullable(c));
                            }
                        }
                    }
                }
            }
        });

        step("get_schemas", () -> {
            try (ResultSet rs = conn.getMetaData().getSchemas()) {
                while (rs.next()) {
                    out("schema_row", rs.getString("TABLE_SCHEM"));
                }
            }
        });

        // DBeaver's and Metabase's table listing.
        step("get_tables", () -> {
            try (ResultSet rs = conn.getMetaData().getTables(null, "public", "%", new String[] {"TABLE", "VIEW"})) {
                while (rs.next()) {
                    out("table_row", rs.getString("TABLE_SCHEM"), rs.getString("TABLE_NAME"), rs.getString("TABLE_TYPE"),
                            rs.getString("REMARKS"));
                }
            }
        });

        step("get_tables_by_name", () -> {
            try (ResultSet rs = conn.getMetaData().getTables(null, "public", view, null)) {
                while (rs.next()) {
                    out("view_row", rs.getString("TABLE_SCHEM"), rs.getString("TABLE_NAME"), rs.getString("TABLE_TYPE"));
                }
            }
        });

        step("get_columns", () -> {
            try (ResultSet rs = conn.getMetaData().getColumns(null, "public", table, "%")) {
                while (rs.next()) {
                    out("column", rs.getString("COLUMN_NAME"), rs.getString("TYPE_NAME"), rs.getInt("DATA_TYPE"),
                            rs.getInt("COLUMN_SIZE"), rs.getInt("DECIMAL_DIGITS"), rs.getInt("NULLABLE"),
                            rs.getInt("ORDINAL_POSITION"), rs.getString("IS_NULLABLE"), rs.getString("IS_AUTOINCREMENT"));
                }
            }
        });

        step("get_view_columns", () -> {
            try (ResultSet rs = conn.getMetaData().getColumns(null, "public", view, "%")) {
                while (rs.next()) {
                    out("view_column", rs.getString("COLUMN_NAME"), rs.getString("TYPE_NAME"), rs.getInt("DATA_TYPE"));
                }
            }
        });

        step("get_primary_keys", () -> {
            int n = 0;
            try (ResultSet rs = conn.getMetaData().getPrimaryKeys(null, "public", table)) {
                while (rs.next()) {
                    n++;
                }
            }
            out("pk_count", n);
        });

        step("transaction_rollback", () -> {
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.executeUpdate("insert into " + qualified + " (id, name) values (999, 'rolled back')");
                conn.rollback();
                try (ResultSet rs = st.executeQuery("select count(*) from " + qualified + " where id = 999")) {
                    rs.next();
                    out("after_rollback", rs.getLong(1));
                }
                conn.commit();
            } finally {
                conn.setAutoCommit(true);
            }
        });

        step("error_recovery", () -> {
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                try {
                    st.executeQuery("select * from public.no_such_table_for_jdbc");
                    out("error_sqlstate", "none");
                } catch (SQLException e) {
                    out("error_sqlstate", e.getSQLState());
                }
                conn.rollback();
                try (ResultSet rs = st.executeQuery("select count(*) from " + qualified)) {
                    rs.next();
                    out("after_error_count", rs.getLong(1));
                }
                conn.commit();
            } finally {
                conn.setAutoCommit(true);
            }
        });
    }
}
