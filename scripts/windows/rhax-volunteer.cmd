@echo off
rem Runs rhax-volunteer.ps1 with this folder's files; right-click > "Run as administrator".
powershell.exe -NoProfile -ExecutionPolicy Bypass -File "%~dp0rhax-volunteer.ps1" %*
pause
