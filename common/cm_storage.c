/* cm_storage.c: placeholder, being written. */
