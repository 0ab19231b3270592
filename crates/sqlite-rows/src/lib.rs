//! `sluice_rows(?)`: a SQLite table-valued function whose rows are the rows of a JSONB
//! parameter (an array of arrays, as `sluice_store::hot::JsonRows` writes it) and whose
//! columns `c0`, `c1`, ... are each row's fields.
//!
//! The hot path inserts many rows per statement with one fixed SQL text, the rows travelling
//! as one parameter. Read with `jsonb_each` and `json_extract(e.r, '$[i]')`, every field was
//! an SQL function call that copied its row out of `jsonb_each`, parsed the path and stepped
//! to the field: 5.2% of the planes' CPU with ten subscriptions per event (perf samples of
//! `sluice bench --subscriptions 10`), 41,000 instructions per delivered webhook in
//! callgrind. Here a row is decoded once, when the cursor reaches it, and a column is a
//! copy of its bytes (1.0%). The decoding is safe Rust (`rows`); this file is only the glue
//! to SQLite's virtual-table interface, the one place in Sluice with unsafe code.
//!
//! [`register`] makes every SQLite connection the process opens afterwards know the
//! function (`sqlite3_auto_extension`). It is eponymous-only: it exists without
//! `CREATE VIRTUAL TABLE`, in every schema, and cannot be created as a table.

mod rows;

/// JSONB element types (sqlite.org/jsonb.html): the low four bits of an element's header.
/// Those the hot path's writer produces and `sluice_rows` reads.
pub mod jsonb {
    pub const NULL: u8 = 0;
    pub const TRUE: u8 = 1;
    pub const FALSE: u8 = 2;
    pub const INT: u8 = 3;
    /// Text without escapes, as JSON has it (read, never written by Sluice).
    pub const TEXT: u8 = 7;
    /// Text as it is, with nothing escaped.
    pub const TEXTRAW: u8 = 10;
    pub const ARRAY: u8 = 11;
}

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::OnceLock;

use libsqlite3_sys as ffi;

use rows::{Field, Malformed, Rows};

/// The function's name in SQL.
pub const NAME: &CStr = c"sluice_rows";

/// Columns `c0` to `c{COLUMNS - 1}`: more fields than the widest row of the hot path.
pub const COLUMNS: usize = 24;

/// Makes `sluice_rows` known to every SQLite connection opened from now on. Idempotent.
pub fn register() -> Result<(), String> {
    static RC: OnceLock<c_int> = OnceLock::new();
    // SAFETY: `init` has the signature SQLite calls an automatic extension with, and
    // registering it (once) has no other precondition.
    let rc = *RC.get_or_init(|| unsafe { ffi::sqlite3_auto_extension(Some(init)) });
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(format!(
            "registering {} with SQLite failed (code {rc})",
            NAME.to_string_lossy()
        ))
    }
}

/// Run by SQLite for each new connection.
unsafe extern "C" fn init(
    db: *mut ffi::sqlite3,
    _err: *mut *mut c_char,
    _api: *const ffi::sqlite3_api_routines,
) -> c_int {
    // SAFETY: `db` is the connection being opened; the name is a NUL-terminated constant and
    // `MODULE` a static, so both outlive the connection; no client data to free.
    unsafe { ffi::sqlite3_create_module_v2(db, NAME.as_ptr(), &MODULE, std::ptr::null_mut(), None) }
}

static MODULE: ffi::sqlite3_module = ffi::sqlite3_module {
    iVersion: 1,
    // No xCreate: eponymous-only.
    xCreate: None,
    xConnect: Some(connect),
    xBestIndex: Some(best_index),
    xDisconnect: Some(disconnect),
    xDestroy: None,
    xOpen: Some(open),
    xClose: Some(close),
    xFilter: Some(filter),
    xNext: Some(next),
    xEof: Some(eof),
    xColumn: Some(column),
    xRowid: Some(rowid),
    xUpdate: None,
    xBegin: None,
    xSync: None,
    xCommit: None,
    xRollback: None,
    xFindFunction: None,
    xRename: None,
    xSavepoint: None,
    xRelease: None,
    xRollbackTo: None,
    xShadowName: None,
    xIntegrity: None,
};

/// The schema SQLite is told: the columns, then the parameter as a hidden column.
fn schema() -> CString {
    let columns: Vec<String> = (0..COLUMNS).map(|i| format!("c{i}")).collect();
    let sql = format!("CREATE TABLE x({}, rows HIDDEN)", columns.join(", "));
    // Made of ASCII letters, digits and punctuation only.
    CString::new(sql).unwrap_or_default()
}

unsafe extern "C" fn connect(
    db: *mut ffi::sqlite3,
    _aux: *mut c_void,
    _argc: c_int,
    _argv: *const *const c_char,
    vtab: *mut *mut ffi::sqlite3_vtab,
    _err: *mut *mut c_char,
) -> c_int {
    let sql = schema();
    // SAFETY: `db` is the connection SQLite is connecting the table on, `sql` a valid
    // NUL-terminated string that lives through the call.
    let rc = unsafe { ffi::sqlite3_declare_vtab(db, sql.as_ptr()) };
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    // SAFETY: `vtab` is where SQLite wants the new table; it takes ownership until
    // `disconnect`, which gives the box back.
    unsafe { *vtab = Box::into_raw(Box::new(ffi::sqlite3_vtab::default())) };
    ffi::SQLITE_OK
}

unsafe extern "C" fn disconnect(vtab: *mut ffi::sqlite3_vtab) -> c_int {
    // SAFETY: `vtab` came from `Box::into_raw` in `connect`, and SQLite disconnects once.
    // An error message SQLite left there is SQLite's to free, and it frees it before this.
    drop(unsafe { Box::from_raw(vtab) });
    ffi::SQLITE_OK
}

/// A usable plan needs the parameter: `rows = ?`, which `sluice_rows(?)` means.
unsafe extern "C" fn best_index(
    _vtab: *mut ffi::sqlite3_vtab,
    info: *mut ffi::sqlite3_index_info,
) -> c_int {
    // SAFETY: SQLite passes a valid index info for this call only; its arrays have
    // `nConstraint` elements.
    let info = unsafe { &mut *info };
    let n = usize::try_from(info.nConstraint).unwrap_or(0);
    for i in 0..n {
        // SAFETY: `i < nConstraint`, the length of both arrays.
        let (constraint, usage) = unsafe {
            (
                &*info.aConstraint.add(i),
                &mut *info.aConstraintUsage.add(i),
            )
        };
        if usize::try_from(constraint.iColumn) == Ok(COLUMNS)
            && c_int::from(constraint.op) == ffi::SQLITE_INDEX_CONSTRAINT_EQ
            && constraint.usable != 0
        {
            usage.argvIndex = 1;
            usage.omit = 1;
            info.estimatedCost = 1.0;
            info.estimatedRows = 100;
            return ffi::SQLITE_OK;
        }
    }
    // Without its parameter the function has nothing to read: no plan.
    ffi::SQLITE_CONSTRAINT
}

/// A cursor: SQLite's part first, as it expects.
#[repr(C)]
struct Cursor {
    base: ffi::sqlite3_vtab_cursor,
    rows: Rows,
}

unsafe extern "C" fn open(
    _vtab: *mut ffi::sqlite3_vtab,
    cursor: *mut *mut ffi::sqlite3_vtab_cursor,
) -> c_int {
    let boxed = Box::new(Cursor {
        base: ffi::sqlite3_vtab_cursor::default(),
        rows: Rows::default(),
    });
    // SAFETY: `cursor` is where SQLite wants the new cursor. `Cursor` is `repr(C)` with
    // SQLite's part first, so the pointer is also one to that part; `close` gives it back.
    unsafe { *cursor = Box::into_raw(boxed).cast::<ffi::sqlite3_vtab_cursor>() };
    ffi::SQLITE_OK
}

unsafe extern "C" fn close(cursor: *mut ffi::sqlite3_vtab_cursor) -> c_int {
    // SAFETY: every cursor SQLite has came from `open` as a boxed `Cursor`, closed once.
    drop(unsafe { Box::from_raw(cursor.cast::<Cursor>()) });
    ffi::SQLITE_OK
}

/// The cursor SQLite hands back.
///
/// # Safety
/// `cursor` must come from `open` and not be closed.
unsafe fn rows_of<'a>(cursor: *mut ffi::sqlite3_vtab_cursor) -> &'a mut Cursor {
    // SAFETY: the caller's promise; SQLite uses a cursor from one thread at a time.
    unsafe { &mut *cursor.cast::<Cursor>() }
}

/// Reports `err` as the statement's error message and returns SQLITE_ERROR.
///
/// # Safety
/// `cursor` must come from `open` and not be closed.
unsafe fn fail(cursor: *mut ffi::sqlite3_vtab_cursor, err: &Malformed) -> c_int {
    let message = CString::new(err.to_string()).unwrap_or_default();
    // SAFETY: the cursor's table is live while the cursor is. SQLite frees a message left
    // in `zErrMsg` with `sqlite3_free` after reading it, so it must come from SQLite's
    // allocator: `sqlite3_mprintf` copies ours; an earlier one is freed first.
    unsafe {
        let vtab = (*cursor).pVtab;
        ffi::sqlite3_free((*vtab).zErrMsg.cast::<c_void>());
        (*vtab).zErrMsg = ffi::sqlite3_mprintf(c"%s".as_ptr(), message.as_ptr());
    }
    ffi::SQLITE_ERROR
}

unsafe extern "C" fn filter(
    cursor: *mut ffi::sqlite3_vtab_cursor,
    _idx_num: c_int,
    _idx_str: *const c_char,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) -> c_int {
    if argc != 1 {
        // SAFETY: `cursor` is SQLite's, from `open`.
        return unsafe { fail(cursor, &Malformed("one parameter expected")) };
    }
    // SAFETY: `argv` has `argc` (1) values, valid for this call; a blob's pointer and size
    // are read before anything else touches the value, and the bytes are copied before
    // the call returns.
    let blob: &[u8] = unsafe {
        let value = *argv;
        if ffi::sqlite3_value_type(value) != ffi::SQLITE_BLOB {
            return fail(cursor, &Malformed("the parameter must be a JSONB blob"));
        }
        let data = ffi::sqlite3_value_blob(value).cast::<u8>();
        let len = usize::try_from(ffi::sqlite3_value_bytes(value)).unwrap_or(0);
        if data.is_null() || len == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(data, len)
        }
    };
    // SAFETY: `cursor` is SQLite's, from `open`.
    let c = unsafe { rows_of(cursor) };
    match c.rows.reset(blob) {
        Ok(()) => ffi::SQLITE_OK,
        // SAFETY: as above.
        Err(e) => unsafe { fail(cursor, &e) },
    }
}

unsafe extern "C" fn next(cursor: *mut ffi::sqlite3_vtab_cursor) -> c_int {
    // SAFETY: `cursor` is SQLite's, from `open`.
    let c = unsafe { rows_of(cursor) };
    match c.rows.advance() {
        Ok(()) => ffi::SQLITE_OK,
        // SAFETY: as above.
        Err(e) => unsafe { fail(cursor, &e) },
    }
}

unsafe extern "C" fn eof(cursor: *mut ffi::sqlite3_vtab_cursor) -> c_int {
    // SAFETY: `cursor` is SQLite's, from `open`.
    c_int::from(unsafe { rows_of(cursor) }.rows.eof())
}

unsafe extern "C" fn column(
    cursor: *mut ffi::sqlite3_vtab_cursor,
    ctx: *mut ffi::sqlite3_context,
    i: c_int,
) -> c_int {
    // SAFETY: `cursor` is SQLite's, from `open`.
    let c = unsafe { rows_of(cursor) };
    // The hidden parameter column (and anything past the fields) reads as NULL.
    let field = usize::try_from(i)
        .ok()
        .filter(|i| *i < COLUMNS)
        .map_or(Field::Null, |i| c.rows.field(i));
    // SAFETY: `ctx` is the result context SQLite passes for this call. Text is copied by
    // SQLite (SQLITE_TRANSIENT) before the call returns, with its length given, so
    // neither its lifetime nor a terminating NUL matters.
    unsafe {
        match field {
            Field::Null => ffi::sqlite3_result_null(ctx),
            Field::Int(n) => ffi::sqlite3_result_int64(ctx, n),
            Field::Text(text) => ffi::sqlite3_result_text64(
                ctx,
                text.as_ptr().cast::<c_char>(),
                text.len() as u64,
                ffi::SQLITE_TRANSIENT(),
                ffi::SQLITE_UTF8 as u8,
            ),
        }
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn rowid(cursor: *mut ffi::sqlite3_vtab_cursor, out: *mut i64) -> c_int {
    // SAFETY: `cursor` is SQLite's, from `open`; `out` is where SQLite wants the rowid.
    unsafe { *out = rows_of(cursor).rows.rowid() };
    ffi::SQLITE_OK
}
