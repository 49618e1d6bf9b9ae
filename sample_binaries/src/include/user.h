// Ring-3 support for the samples that run user code (see user.S). Include after check.h.
#ifndef SAMPLE_USER_H
#define SAMPLE_USER_H

#define USER_CS             0x1B        // DPL 3 flat code, RPL 3
#define USER_DS             0x23        // DPL 3 flat data, RPL 3
#define TSS_SEL             0x28
#define GATE_INTR_USER      0xEE        // 32-bit interrupt gate that ring 3 may use with int n
#define EFL_IOPL3           0x3000
#define TSS_ESP0            4           // offsets in the TSS
#define TSS_SS0             8
#define IO_PERMITTED_PORT   0x80        // the one port the TSS I/O bitmap opens (POST codes)
#define GDT_FREE_SLOTS      16          // selectors 0x30-0xA8, for the samples' own descriptors
#define GDT_LIMIT           (0x30 + 8 * GDT_FREE_SLOTS - 1)
#define USER_RETURN_VECTOR  0x80        // ring-3 code run by user_call ends with int USER_RETURN_VECTOR

#endif
