<#
.SYNOPSIS
    Installs the test-signed rhax.sys on this Windows machine, runs rhax-check and QEMU's HAX
    opening sequence (rhax-client) against it, collects everything into one report file, then
    stops and uninstalls the driver.

.DESCRIPTION
    rhax has never been loaded on a real Windows machine before: this script is how a
    volunteer checks it. Run it from an elevated PowerShell, in a folder holding:
        rhax-testsigned.sys  the test-signed driver (cargo xtask sign)
        rhax-test.cer     the certificate it was signed with
        rhax-check.exe    rhax-client.exe   (x86_64-pc-windows-gnu builds)
    Test signing must be on (bcdedit /set testsigning on; Secure Boot off; reboot).
    The report (rhax-report-<computer>-<time>.txt) is written next to the script: send it back.

    A kernel driver can crash Windows (blue screen). Save your work first. If the machine
    crashes, the minidump in C:\Windows\Minidump is the most useful thing to send.

.PARAMETER RunGuest
    With working VT-x, also run a 5-byte guest (real mode: OUT 0x80, HLT) through the driver.

.PARAMETER KeepInstalled
    Leave the driver service and the certificate installed at the end.

.PARAMETER ServiceName
    The service name: rhax (default) or IntelHaxm (HAXM's name, for tools that look for it;
    only when Intel HAXM itself is not installed).
#>
[CmdletBinding()]
param(
    [switch]$RunGuest,
    [switch]$KeepInstalled,
    [ValidateSet('rhax', 'IntelHaxm')][string]$ServiceName = 'rhax',
    [string]$Sys = 'rhax-testsigned.sys',
    [string]$Cert = 'rhax-test.cer'
)

$ErrorActionPreference = 'Continue'
$here = Split-Path -Parent $MyInvocation.MyCommand.Path
$start = Get-Date
$report = Join-Path $here ("rhax-report-{0}-{1}.txt" -f $env:COMPUTERNAME, $start.ToString('yyyyMMdd-HHmmss'))
$driverFile = Join-Path $env:SystemRoot "System32\drivers\$ServiceName.sys"

function Section([string]$title) {
    $line = "==== $title ===="
    Write-Host $line -ForegroundColor Cyan
    Add-Content -Path $report -Value "`r`n$line"
}

function Log([string]$text) {
    Write-Host $text
    Add-Content -Path $report -Value $text
}

# Runs a program, logs its command line, output and exit code; returns the exit code.
function Run([string]$exe, [string[]]$arguments) {
    Log ("> $exe " + ($arguments -join ' '))
    $out = & $exe @arguments 2>&1 | Out-String
    $code = $LASTEXITCODE
    Log $out.TrimEnd()
    Log "(exit code $code)"
    return $code
}

function Stop-Here([string]$why) {
    Log "STOPPED: $why"
    Write-Host "Report: $report" -ForegroundColor Yellow
    exit 1
}

Set-Content -Path $report -Value "rhax volunteer report, $($start.ToString('u'))"

# --- 0. Preconditions.
$admin = ([Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent()).IsInRole(
    [Security.Principal.WindowsBuiltInRole]::Administrator)
if (-not $admin) { Stop-Here 'run this script from an elevated (Administrator) PowerShell' }
foreach ($f in @($Sys, $Cert, 'rhax-check.exe', 'rhax-client.exe')) {
    if (-not (Test-Path (Join-Path $here $f))) { Stop-Here "missing $f next to the script" }
}

# --- 1. The machine.
Section 'machine'
$os = Get-CimInstance Win32_OperatingSystem
Log ("Windows: {0} {1} build {2}" -f $os.Caption, $os.Version, $os.BuildNumber)
$cpu = Get-CimInstance Win32_Processor | Select-Object -First 1
Log ("CPU: {0}; VMMonitorModeExtensions {1}; VirtualizationFirmwareEnabled {2}; SLAT {3}" -f `
    $cpu.Name, $cpu.VMMonitorModeExtensions, $cpu.VirtualizationFirmwareEnabled, $cpu.SecondLevelAddressTranslationExtensions)
Log ("HypervisorPresent: {0}" -f (Get-CimInstance Win32_ComputerSystem).HypervisorPresent)
try { Log ("Secure Boot: {0}" -f (Confirm-SecureBootUEFI)) } catch { Log "Secure Boot: unknown ($($_.Exception.Message))" }
try {
    $dg = Get-CimInstance -ClassName Win32_DeviceGuard -Namespace root\Microsoft\Windows\DeviceGuard -ErrorAction Stop
    Log ("Device Guard: VBS status {0}; services running {1}" -f $dg.VirtualizationBasedSecurityStatus, ($dg.SecurityServicesRunning -join ','))
} catch { Log 'Device Guard: unknown' }
$bcd = & bcdedit /enum '{current}' 2>&1 | Out-String
Log $bcd.TrimEnd()
# The boot options the kernel started with (not localized, unlike bcdedit's output).
$startOptions = (Get-ItemProperty 'HKLM:\SYSTEM\CurrentControlSet\Control' -Name SystemStartOptions).SystemStartOptions
Log "SystemStartOptions: $startOptions"
$testSigning = $startOptions -match 'TESTSIGNING'

# --- 2. Before installing.
Section 'rhax-check before installing'
[void](Run (Join-Path $here 'rhax-check.exe') @())
$existing = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
$haxm = Get-Service -Name 'IntelHaxm' -ErrorAction SilentlyContinue
if ($existing) { Stop-Here "a service named $ServiceName already exists; remove it first (sc.exe stop $ServiceName; sc.exe delete $ServiceName)" }
if ($haxm -and $haxm.Status -eq 'Running') {
    Stop-Here 'Intel HAXM is running and owns \\.\HAX: stop it first (sc.exe stop IntelHaxm), or uninstall it'
}
if (-not $testSigning) {
    Stop-Here 'test signing is off: run "bcdedit /set testsigning on" (Secure Boot must be off), reboot, run this script again'
}

# --- 3. Install: the certificate, the driver file, the service.
Section 'install'
Log (& (Join-Path $env:SystemRoot 'System32\certutil.exe') -dump (Join-Path $here $Cert) 2>&1 | Select-String -Pattern 'Subject|Cert Hash' | Out-String).TrimEnd()
$imported = @()
foreach ($store in @('Cert:\LocalMachine\Root', 'Cert:\LocalMachine\TrustedPublisher')) {
    $c = Import-Certificate -FilePath (Join-Path $here $Cert) -CertStoreLocation $store
    $imported += [pscustomobject]@{ Store = $store; Thumbprint = $c.Thumbprint }
    Log "certificate $($c.Thumbprint) imported into $store"
}
$sig = Get-AuthenticodeSignature (Join-Path $here $Sys)
Log ("signature of ${Sys}: {0} ({1}); signer {2}" -f $sig.Status, $sig.StatusMessage, $sig.SignerCertificate.Subject)
Copy-Item -Force (Join-Path $here $Sys) $driverFile
Log "copied to $driverFile"
[void](Run 'sc.exe' @('create', $ServiceName, 'type=', 'kernel', 'start=', 'demand', 'binPath=', "System32\drivers\$ServiceName.sys"))
$started = Run 'sc.exe' @('start', $ServiceName)
[void](Run 'sc.exe' @('query', $ServiceName))

# --- 4. The clients.
if ($started -eq 0) {
    Section 'rhax-check with the driver running'
    [void](Run (Join-Path $here 'rhax-check.exe') @())
    Section "rhax-client: QEMU's opening sequence"
    $seq = Run (Join-Path $here 'rhax-client.exe') @()
    $notWorking = (Get-Content $report -Raw) -match 'QEMU would stop at: HAX_IOCTL_CAPABILITY'
    if ($notWorking) {
        Section 'rhax-client assert-no-vtx (VT-x not usable here: the same checks as the Wine stage)'
        [void](Run (Join-Path $here 'rhax-client.exe') @('assert-no-vtx'))
    } else {
        Section 'rhax-client assert-vtx (VM and vCPU devices: exclusivity, short buffers, foreign codes)'
        [void](Run (Join-Path $here 'rhax-client.exe') @('assert-vtx'))
        if ($RunGuest) {
            Section 'rhax-client --run (a 5-byte guest through the driver)'
            [void](Run (Join-Path $here 'rhax-client.exe') @('--run'))
        }
    }
    Section 'stop (unload) and start again'
    [void](Run 'sc.exe' @('stop', $ServiceName))
    Start-Sleep -Seconds 2
    [void](Run 'sc.exe' @('query', $ServiceName))
    if ((Run 'sc.exe' @('start', $ServiceName)) -eq 0) {
        [void](Run (Join-Path $here 'rhax-client.exe') @())
        [void](Run 'sc.exe' @('stop', $ServiceName))
    }
} else {
    Log "sc start failed (exit $started): see the event log and Code Integrity entries below"
}

# --- 5. The event log since the script started.
Section 'event log (System: service control manager, kernel; Code Integrity)'
$filters = @(
    @{ LogName = 'System'; StartTime = $start },
    @{ LogName = 'Microsoft-Windows-CodeIntegrity/Operational'; StartTime = $start }
)
foreach ($f in $filters) {
    try {
        Get-WinEvent -FilterHashtable $f -ErrorAction Stop |
            Where-Object { $_.LogName -ne 'System' -or $_.ProviderName -match 'Service Control Manager|Kernel|rhax|IntelHaxm|CodeIntegrity|BugCheck|WHEA' } |
            ForEach-Object { Log ("{0:u} {1} id {2} {3}: {4}" -f $_.TimeCreated, $_.LogName, $_.Id, $_.ProviderName, ($_.Message -replace '\s+', ' ')) }
    } catch { Log "$($f.LogName): no entries ($($_.Exception.Message))" }
}

# --- 6. Uninstall.
Section 'uninstall'
if ($KeepInstalled) {
    Log "kept installed: service $ServiceName, $driverFile, certificate in Root and TrustedPublisher"
} else {
    [void](Run 'sc.exe' @('stop', $ServiceName))
    [void](Run 'sc.exe' @('delete', $ServiceName))
    Start-Sleep -Seconds 1
    Remove-Item -Force $driverFile -ErrorAction SilentlyContinue
    if (Test-Path $driverFile) { Log "could not delete $driverFile (still loaded?); delete it after a reboot" } else { Log "deleted $driverFile" }
    foreach ($i in $imported) {
        Remove-Item -Path (Join-Path $i.Store $i.Thumbprint) -ErrorAction SilentlyContinue
        Log "certificate $($i.Thumbprint) removed from $($i.Store)"
    }
}
Log "done: $((Get-Date) - $start)"
Write-Host "Report: $report  (please send this file back)" -ForegroundColor Green
