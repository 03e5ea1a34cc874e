/* Entry point and interrupt return trampoline of the ftvm guest runtime. */
    .text
    .globl _start
_start:
    xor %ebp, %ebp
    and $-16, %rsp
    call main
    mov %eax, %edi
    call ftvm_exit

/* The hypervisor enters an interrupt handler with this address as its return
 * address. The OUT asks the hypervisor to restore the interrupted context; the jump
 * ends the block so the request takes effect before anything else runs. */
    .globl ftvm_irq_trampoline
ftvm_irq_trampoline:
    mov $0x511, %dx
    out %al, %dx
1:  jmp 1b

/* The ftvm ABI note: tells ftvm to run this ELF on the ftvm guest ABI, not as a
 * Linux program (hypervisor/guest.py). Name "ftvm", type 1, descriptor: ABI version. */
    .section .note.ftvm,"a",@note
    .balign 4
    .long 5
    .long 4
    .long 1
    .asciz "ftvm"
    .balign 4
    .long 2
    .balign 4

    .section .note.GNU-stack,"",@progbits
