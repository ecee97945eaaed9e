// Trained tasks kept in the browser (IndexedDB), keyed by basis fingerprint and name: a task survives a reload
// and is only offered with a bundle of the same basis. The stored value is the task file's bytes.

const DB = "edge-eigenlora";
const STORE = "tasks";

function open() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(new Error(`IndexedDB cannot be opened (${req.error?.message}); the browser may block storage for this page.`));
  });
}

function tx(mode, fn) {
  return open().then(
    (db) =>
      new Promise((resolve, reject) => {
        const t = db.transaction(STORE, mode);
        const request = fn(t.objectStore(STORE));
        t.oncomplete = () => resolve(request.result);
        t.onerror = () => reject(new Error(`IndexedDB: ${t.error?.message}`));
      }),
  );
}

const key = (basis, name) => `${basis}/${name}`;

/** Stored tasks of one basis: [{name, bytes}]. */
export async function listStored(basis) {
  const all = await tx("readonly", (s) => s.getAll(IDBKeyRange.bound(`${basis}/`, `${basis}/\uffff`)));
  return all.map((v) => ({ name: v.name, bytes: new Uint8Array(v.bytes) }));
}

/** Store a task; refuses (nothing written) a name that is already stored for this basis. */
export async function storeTask(basis, name, bytes) {
  const existing = await tx("readonly", (s) => s.getKey(key(basis, name)));
  if (existing !== undefined) throw new Error(`task ${JSON.stringify(name)} is already stored in this browser; choose another name.`);
  await tx("readwrite", (s) => s.add({ name, bytes: bytes.slice().buffer }, key(basis, name)));
}

export async function deleteStored(basis, name) {
  await tx("readwrite", (s) => s.delete(key(basis, name)));
}
